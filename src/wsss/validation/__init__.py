"""Validation of dataset drops with Great Expectations: per-image metadata table → expectation suite →
verdict lines, summary.json and Data Docs. Great Expectations is imported only when validating."""

from wsss.validation.run import ValidationResult, validate_dataset

__all__ = ["ValidationResult", "validate_dataset"]
