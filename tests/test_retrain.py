"""The retraining deployment: prefect.yaml deploys it to the `gpu` process pool with its cron schedule and
a concurrency limit of 1, `wsss serve` serves it, and the flow runs end to end on a tiny toy world —
S3 DVC remote and S3 drops on a moto server, one drop merged, one quarantined, `dvc exp run` named after
the flow run, pushed, the registry gate deciding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from helpers.projects import TINY, commit_copy, copy_repo, shrink
from wsss.ops import s3 as s3lib
from wsss.settings import load_settings
from wsss.ops.drops import S3DropArea

pytestmark = pytest.mark.slow
PY_BIN = str(Path(sys.executable).parent)


def api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def read_deployment(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def prefect_cli(*args: str, cwd=REPO, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api_url(), **(env or {})}
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_prefect_yaml_deploys_to_the_gpu_pool_with_schedule_and_limit(prefect_harness):
    proc = prefect_cli("work-pool", "create", "gpu", "--type", "process", "--overwrite",
                       "--base-job-template", str(REPO / "infra/gpu-pool.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("gpu")
    assert pool.type == "process"
    assert "PYTORCH_CUDA_ALLOC_CONF" in pool.base_job_template["variables"]["properties"]["env"]["default"]
    proc = prefect_cli("--no-prompt", "deploy", "--all", env={"WSSS_WORKDIR": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    d = read_deployment("retrain/gpu-pool")
    assert d.work_pool_name == "gpu" and d.entrypoint == "flows/retrain.py:retrain"
    assert d.job_variables["working_dir"] == str(REPO)
    ops = load_settings(REPO / "params.yaml").ops  # the one source of the cron (tests/test_retrain_schedule.py)
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules] == [
        (ops.schedule, ops.timezone, True)]
    assert d.global_concurrency_limit.limit == 1
    assert d.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert d.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(REPO)


def test_wsss_serve_serves_the_deployment_on_the_configured_schedule(prefect_harness, tmp_path):
    work = tmp_path / "repo"
    copy_repo(work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["ops"]["schedule"] = "15 4 * * *"
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PREFECT_API_URL": api_url(), "PATH": f"{PY_BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "wsss.cli", "serve"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                d = read_deployment("retrain/local")
                if d.schedules and d.schedules[0].schedule.cron == "15 4 * * *":
                    break
            except Exception:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(1)
        else:
            pytest.fail("wsss serve did not create its deployment within 120 s")
        assert d.work_pool_name is None and d.global_concurrency_limit.limit == 1
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: stops promptly, no process left behind
        assert proc.wait(30) in (0, 130)
        assert subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).stdout == b""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_serve_without_a_server_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-m", "wsss.cli", "serve"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: PREFECT_API_URL is not set")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_second_retrain_in_the_same_workspace_is_skipped(prefect_harness, tmp_path, monkeypatch):
    from flows.retrain import retrain, workspace_lock

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    with workspace_lock(tmp_path) as mine:
        assert mine
        state = retrain(return_state=True)
    assert state.is_cancelled() and "another retrain or `wsss drops ingest` holds" in state.message


def run(*cmd, cwd, env):
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture
def team_project(tmp_path, moto_s3, monkeypatch):
    """A project as a team has it: its own dataset `dvc add`ed, an S3 DVC remote, drops waiting in S3."""
    work = tmp_path / "repo"
    copy_repo(work)
    shrink(work / "params.yaml", {**TINY, "data": {"root": "data/raw/shapes"}})
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "PATH": f"{PY_BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for key in ("MLFLOW_TRACKING_URI", "PATH", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("DVC_ROOT", raising=False)
    wsss = [sys.executable, "-m", "wsss.cli"]
    run(*wsss, "toyworld", "data/raw/shapes", "--num-train", "16", "--num-val", "8", cwd=work, env=env)
    s3 = s3lib.client()
    s3lib.ensure_bucket(s3, "team")
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q"], [*dvc, "add", "-q", "data/raw/shapes"],
                [*dvc, "remote", "add", "-d", "storage", "s3://team/dvc"],
                [*dvc, "remote", "modify", "--local", "storage", "endpointurl", moto_s3],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"], [*dvc, "push", "-q"]):
        run(*cmd, cwd=work, env=env)
    # drops: 5 new toy images (VOC, another seed) and a custom drop with a label the dataset lacks
    run(*wsss, "toyworld", str(tmp_path / "good"), "--num-train", "4", "--num-val", "1", "--seed", "7", cwd=work, env=env)
    drops = S3DropArea("s3://team/drops", s3=s3)
    drops.deliver(tmp_path / "good", "good")
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    subprocess.run(["cp", str(next((tmp_path / "good/JPEGImages").iterdir())), str(bad / "images/x.jpg")], check=True)
    (bad / "labels.csv").write_text("image,labels\nx.jpg,unicorn\n")
    drops.deliver(bad, "bad")
    monkeypatch.chdir(work)
    return work, s3


def test_retrain_end_to_end_on_a_tiny_toy_world(prefect_harness, team_project):
    from flows.retrain import retrain
    from wsss.tracking.runs import open_store

    work, s3 = team_project
    pushed_before = len(s3lib.list_objects(s3, s3lib.S3Uri("team", "dvc/")))
    state = retrain(drops="s3://team/drops", return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    status = {o["drop"]: o["status"] for o in result["drops"]}
    assert status == {"good": "merged", "bad": "quarantined"}

    # the dataset grew by the drop, as a committed DVC version; the manifest has its 5 images
    assert (work / "data/raw/shapes/drops/good/drop.json").is_file()
    log = subprocess.run(["git", "log", "--format=%s"], cwd=work, capture_output=True, text=True).stdout
    assert "data: merge drop(s) good" in log
    manifest = (work / "data/prepared/manifest.csv").read_text()
    assert manifest.count("\ngood__") == 5
    # the experiment is named after the flow run, its metrics are the pipeline's
    exps = subprocess.run([sys.executable, "-m", "dvc", "exp", "ls", "--name-only"], cwd=work, capture_output=True,
                          text=True).stdout.split()
    assert result["experiment"] in exps and result["experiment"].endswith(str(state.state_details.flow_run_id)[:8])
    assert json.loads((work / "reports/seg/multi_scale/metrics.json").read_text())["images"] == 9
    assert set(json.loads((work / "reports/metrics.json").read_text())["seg"]["val"]) == {"miou", "miou_ms"}
    # pushed: the dataset version and the pipeline's outputs are on the remote
    assert len(s3lib.list_objects(s3, s3lib.S3Uri("team", "dvc/"))) > pushed_before
    cloud = subprocess.run([sys.executable, "-m", "dvc", "status", "--cloud"], cwd=work, capture_output=True,
                           text=True).stdout
    assert "in sync" in cloud, cloud  # every output of the experiment (the segmenter too) is on the remote
    # the drops moved: accepted / quarantine with its report
    assert s3lib.list_children(s3, s3lib.S3Uri("team", "drops/incoming/")) == []
    assert s3lib.list_children(s3, s3lib.S3Uri("team", "drops/quarantine/")) == ["bad", "bad.report"]
    assert s3lib.list_children(s3, s3lib.S3Uri("team", "drops/accepted/")) == ["good", "good.report"]
    # the findings where people look: the flow run's Prefect artifact and the MLflow run of the ingest
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect_client:
        [artifact] = prefect_client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["drop-findings"])))
    assert "| good | merged | 5 | 0 | 0 | 0 |" in artifact.data and "| bad | quarantined |" in artifact.data
    assert "- FAIL labels are in the vocabulary: 1 image — x (unknown: unicorn)" in artifact.data
    client = open_store(None)
    [ingest_run] = client.search_runs([client.get_experiment_by_name("wsss").experiment_id],
                                      "tags.`dvc.stage` = 'ingest'")
    assert ingest_run.data.metrics["drops.merged"] == 1 and ingest_run.data.metrics["drops.quarantined"] == 1
    assert {a.path for a in client.list_artifacts(ingest_run.info.run_id, "drops")} == {"drops/bad", "drops/good"}
    # the registry gate ran inside the experiment: the first model becomes champion
    assert str(client.get_model_version_by_alias("wsss-segmenter", "champion").version) == "1"


def test_retrain_with_mlflow_unreachable_fails_with_one_line(prefect_harness, tmp_path, monkeypatch):
    import socket

    from flows.retrain import retrain

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends
    work = tmp_path / "repo"
    copy_repo(work)
    shrink(work / "params.yaml", {**TINY, "tracking": {"on_outage": "fail"}})  # buffer would run the pipeline
    commit_copy(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("PATH", f"{PY_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("WSSS_DROPS", raising=False)
    monkeypatch.chdir(work)
    state = retrain(return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"tracking: MLflow tracking server http://127.0.0.1:{port} unreachable")
    assert "\n" not in state.message
    assert not (work / "data").exists()  # stopped before any work


def test_a_failing_stage_is_named_by_its_own_error_line():
    from wsss.ops.commands import _cause

    dvc_output = ["Running stage 'prepare':", "error: data/raw/x: dataset root not found", "",
                  "ERROR: failed to reproduce 'prepare': failed to run: python -m stages.prepare, exited with 1"]
    assert _cause(dvc_output) == "error: data/raw/x: dataset root not found"
    assert _cause(["ERROR: failed to push data to the cloud"]) == "ERROR: failed to push data to the cloud"
    assert _cause(["something", "last words", ""]) == "last words"
