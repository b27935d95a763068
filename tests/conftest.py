"""Test-wide isolation: Prefect, MLflow and torch never touch the user's home or the project's stores."""

from __future__ import annotations

import os
import shutil
import sys
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
    # The suite starts hundreds of Python processes (stages, CLIs, servers), each importing torch, Prefect,
    # MLflow: with PYTHONDONTWRITEBYTECODE set (as on the CI image) each one compiled them again (~8 s).
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    # Torch threads: the cores per xdist worker, at most 2 (tiny models gain nothing from more), inherited by
    # the children through OMP_NUM_THREADS; more only oversubscribes the machine (OpenMP barriers).
    if not hasattr(config, "workerinput") and (config.getoption("numprocesses", None) or 0) > 0:
        return  # xdist's controller: its workers (which inherit this environment) run the tests
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, (os.cpu_count() or 2) // workers))))
    try:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    except ImportError:
        pass


# The test modules that take longest, heaviest first (measured with --durations; re-measure when one grows).
# Under xdist (pyproject's addopts: `--dist loadfile --no-loadscope-reorder`) a module is one unit of work,
# so that its module fixtures are built once, and the units are handed out in collection order: these first,
# so that the workers finish together instead of one starting the longest module last.
HEAVIEST = ("test_pipeline", "test_real_data", "test_retrain", "test_outage_tracking", "test_outage_s3",
            "test_stage_safety", "test_dask_shards", "test_ops_drops", "test_ops_infra", "test_outage_prefect",
            "test_drop_meaning", "test_seg_ddp", "test_ops_s3")


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(HEAVIEST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest in collection order


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


@pytest.fixture(scope="session")
def moto_s3():
    """An in-memory S3 server (moto) on 127.0.0.1: yields its endpoint URL; for the fixture's duration
    AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (testing/testing), AWS_DEFAULT_REGION (us-east-1) and
    AWS_ENDPOINT_URL (it) are set, and the variables that would send boto3 elsewhere unset."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture(scope="session")
def drop_project(tmp_path_factory):
    """A git + DVC project whose dataset is `dvc add`ed (`helpers.drops.make_project`), made once: a test
    takes its own copy (`helpers.drops.copy_project`), never changes this one."""
    from helpers.drops import make_project

    return make_project(tmp_path_factory.mktemp("drop-project") / "project")
