"""One module per DVC stage: read params, run the stage as a Prefect flow, track it in MLflow.

Each module is thin wiring; the algorithms live in the `wsss` library.
"""

from wsss.prefect_env import apply_prefect_defaults

apply_prefect_defaults()  # before any stage imports prefect
