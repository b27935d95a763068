"""One module per DVC stage: read params, run the stage as a Prefect flow, track it in MLflow.

Each module is thin wiring; the algorithms live in the `wsss` library.
"""
