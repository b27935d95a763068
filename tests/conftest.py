"""Test-wide isolation: Prefect, MLflow and torch never touch the user's home or the project's stores."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Before any test module is collected: Prefect reads its settings when first imported, and test
    modules import it (through `stages`) at collection time."""
    home = Path(tempfile.mkdtemp(prefix="wsss-tests-"))
    config._wsss_home = home
    os.environ["PREFECT_HOME"] = str(home / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


def pytest_unconfigure(config):
    home = getattr(config, "_wsss_home", None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for tests that run flows in-process."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
