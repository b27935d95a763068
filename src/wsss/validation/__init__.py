"""Validation of dataset drops with Great Expectations: per-image metadata table → expectation suite →
verdict lines, summary.json and Data Docs. Great Expectations is imported only when validating."""

from wsss.validation.run import (ValidationResult, default_report_dir, report_lines, validate_dataset,
                                 validate_drop)

__all__ = ["ValidationResult", "default_report_dir", "report_lines", "validate_dataset", "validate_drop"]
