"""Composite Prefect flows (validate a drop; later: retrain) and their serve/deploy entry points."""

from wsss.prefect_env import apply_prefect_defaults

apply_prefect_defaults()  # before any flow imports prefect
