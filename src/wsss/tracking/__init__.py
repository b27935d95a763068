"""MLflow tracking: one run per stage execution, runs of one pipeline version under one parent run."""

from wsss.tracking.runs import StageRun, flatten, start_stage_run, tracking_uri

__all__ = ["StageRun", "flatten", "start_stage_run", "tracking_uri"]
