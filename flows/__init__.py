"""Composite Prefect flows (validate a drop; later: retrain) and their serve/deploy entry points."""
