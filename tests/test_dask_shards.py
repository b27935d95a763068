"""The `cams` and `masks` stages give the same files on a local Dask cluster of 2 worker processes (2 shards)
as in one process (1 shard, threads): every CAM array and every mask PNG, byte for byte."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from helpers.projects import stage_env, stage_project

pytestmark = pytest.mark.slow

IMAGES = 12  # toy world: 8 train + 4 val, both splits get CAMs (6 images per Dask shard)
RUNS = {  # run name → settings; each run writes its own CAM and mask folders
    "one": {"cams": {"shards": 1, "dask_address": None}, "masks": {"shards": 1, "dask_address": None}},
    # masks.workers 2: a shard's process pool inside a Dask worker process (they were daemonic: a crash)
    "dask": {"cams": {"shards": 2, "dask_address": "local"},
             "masks": {"shards": 2, "dask_address": "local", "workers": 2}},
}


def _params(root: Path, name: str) -> Path:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in RUNS[name].items():
        params[section].update(values, out=f"{section}_{name}")
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _metrics(root: Path, name: str, stage: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / f'mlflow_{name}.db'}")
    exp = client.get_experiment_by_name("safety")
    [run] = client.search_runs([exp.experiment_id], filter_string=f"tags.`dvc.stage` = '{stage}'")
    return run.data.metrics


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny project; `cams` then `masks` as `python -m stages.<name>` in both runs at once (each with its own
    folders and MLflow store); their output by run and stage. The teacher folder (`prompts.teacher`) does not
    exist, so `cams` on words computes every map. The stages share one Prefect API, as under `wsss repro`."""
    from wsss.prefect_env import launch_api_server, stop_process, wait_until_ready

    root = stage_project(tmp_path_factory.mktemp("dask"), 8, 4)
    server, url = launch_api_server()
    logs = {}
    try:
        wait_until_ready(url, server)
        envs = {name: stage_env(root, PYTHONPATH=str(REPO), WSSS_PARAMS=str(_params(root, name)),
                                PREFECT_API_URL=url, MLFLOW_TRACKING_URI=f"sqlite:///{root / f'mlflow_{name}.db'}",
                                PREFECT_LOGGING_LEVEL="INFO",  # the Dask scheduler's log names the workers it registers
                                # One torch thread per process, as a Dask nanny gives its workers (pre-spawn-environ):
                                # another count sums CPU kernels in another order, moving some fp16 CAMs by 1 ulp.
                                OMP_NUM_THREADS="1")
                for name in RUNS}
        for stage in ("cams", "masks"):
            procs = {name: subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=root, env=env, text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                     for name, env in envs.items()}
            for name, proc in procs.items():
                logs[name, stage] = proc.communicate(timeout=600)[0]
            for name, proc in procs.items():
                assert proc.returncode == 0, f"{name} {stage}:\n{logs[name, stage][-6000:]}"
    finally:
        stop_process(server)
    return root, logs


@pytest.mark.parametrize("stage", ["cams", "masks"])
def test_dask_run_used_a_local_cluster_of_two_workers(runs, stage):
    _, logs = runs
    dask = logs["dask", stage]
    assert "Creating a new Dask cluster" in dask, dask[-3000:]
    assert len(set(re.findall(r"Register worker addr: (\S+)", dask))) == 2, dask[-3000:]
    assert all(f"shard {i}/2" in dask for i in range(2))
    assert "Register worker" not in logs["one", stage] and "shard 0/1" in logs["one", stage]


def test_every_map_and_mask_was_computed_in_both_runs(runs):
    root, _ = runs
    for name in RUNS:
        cams, masks = _metrics(root, name, "cams"), _metrics(root, name, "masks")
        assert (cams["computed"], cams["reused"], cams["skipped"]) == (IMAGES, 0, 0), name
        assert (masks["written"], masks["skipped"]) == (IMAGES, 0), name


def test_cams_are_identical(runs):
    root, _ = runs
    one, dask = sorted((root / "cams_one").glob("*.npz")), sorted((root / "cams_dask").glob("*.npz"))
    assert [p.name for p in one] == [p.name for p in dask] and len(one) == IMAGES
    for a, b in zip(one, dask):
        with np.load(a) as x, np.load(b) as y:
            assert sorted(x.files) == sorted(y.files) and {"cam", "refined", "labels"} <= set(x.files)
            for key in x.files:
                assert np.array_equal(x[key], y[key]), f"{a.name}: {key}"


def test_masks_are_byte_identical(runs):
    root, _ = runs
    one = {p.name: p.read_bytes() for p in sorted((root / "masks_one").glob("*.png"))}
    dask = {p.name: p.read_bytes() for p in sorted((root / "masks_dask").glob("*.png"))}
    assert len(one) == IMAGES and one.keys() == dask.keys()
    assert [n for n in one if one[n] != dask[n]] == []
