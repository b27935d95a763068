"""S3 outages in the retrain flow: the S3 server (moto in server mode on a fixed 127.0.0.1 port) stops
mid-fetch of a drop and mid-`dvc push`; the flow gives up after boto3's/s3fs's bounded retries and fails
naming the step, merges nothing by halves and takes no drop twice, and the next run (server back, same
address and data) finishes the work. The pipeline is empty (`dvc exp run` of no stages) so that only the
S3 steps take time."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import yaml

from helpers.drops import GIT, copy_project, make_drop
from helpers.servers import MlflowServer, free_port
from wsss.ops import s3 as s3lib
from wsss.ops.drops import S3DropArea

pytestmark = pytest.mark.slow
DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server at a fixed address that a test stops and starts again: its data (moto's in-memory
    backend, in this process) survives the restart, as a real store's would."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    box = {"server": ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)}
    box["server"].start()

    def stop():
        box["server"].stop()

    def start():
        box["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        box["server"].start()

    with pytest.MonkeyPatch.context() as mp:
        for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "WSSS_DROPS"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}", stop, start
        box["server"].stop()


@pytest.fixture
def team(tmp_path, monkeypatch, drop_project, s3_server, prefect_harness):
    """A drop project with an S3 DVC remote and an S3 drop area, both on the stoppable server."""
    endpoint, _, _ = s3_server
    project = copy_project(drop_project, tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ops"] = {"push": True, "retries": 2}
    params["tracking"] = {"experiment": "s3-outage"}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    bucket = f"team{free_port()}"
    s3 = s3lib.client(endpoint)
    s3lib.ensure_bucket(s3, bucket)
    for cmd in ([*DVC, "remote", "add", "-d", "storage", f"s3://{bucket}/dvc"],
                [*DVC, "remote", "modify", "--local", "storage", "endpointurl", endpoint],
                [*GIT, "add", "-A"], [*GIT, "commit", "-qm", "remote"], [*DVC, "push", "-q"]):
        subprocess.run(cmd, cwd=project, check=True, capture_output=True)
    for key, value in {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}", "GIT_AUTHOR_NAME": "t",
                       "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                       "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(project)
    import flows.retrain as retrain_module

    monkeypatch.setattr(retrain_module, "push", retrain_module.push.with_options(retries=0))  # fail at once
    return project, S3DropArea(f"s3://{bucket}/drops", s3=s3), s3, bucket


def _cloud_in_sync(project) -> bool:
    out = subprocess.run([*DVC, "status", "--cloud"], cwd=project, capture_output=True, text=True).stdout
    return "in sync" in out


def _merge_commits(project, name: str) -> int:
    log = subprocess.run(["git", "log", "--format=%s"], cwd=project, capture_output=True, text=True).stdout
    return sum(1 for line in log.splitlines() if line == f"data: merge drop(s) {name}")


def test_s3_stopped_mid_fetch_then_mid_push_costs_no_drop_and_the_next_run_finishes(team, s3_server, monkeypatch,
                                                                                      tmp_path):
    from flows.retrain import retrain

    project, area, s3, bucket = team
    _, stop, start = s3_server
    area.deliver(make_drop(tmp_path / "a", 700, labels=("cat",) * 40), "a")
    before = (project / "data/raw/base.dvc").read_bytes()
    merged = project / "data/raw/base/drops/a"

    # 1. S3 stops while the drop is fetched (after its third file) and stays down for the rest of the run
    real, calls = s3lib.download, []

    def download_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(s3lib, "download", download_then_stop)
    began = time.monotonic()
    try:
        state = retrain(drops=str(area.uri), return_state=True)
    finally:
        start()
        monkeypatch.setattr(s3lib, "download", real)
    assert time.monotonic() - began < 120  # bounded retries, then each step's failure
    assert state.is_failed() and state.message.startswith("ingest drops: drop a: downloading s3://"), state.message
    assert "; push: dvc push failed" in state.message and "\n" not in state.message
    assert not merged.exists() and not list((project / ".wsss/staging").glob("*"))
    assert (project / "data/raw/base.dvc").read_bytes() == before  # nothing half-merged
    assert area.incoming() == ["a"]

    # 2. back: the drop is taken; S3 stops again once `dvc push` has sent a few of its files
    pushed = len(s3lib.list_objects(s3, s3lib.S3Uri(bucket, "dvc/")))
    stopped = threading.Event()

    def stop_mid_push():
        while not stopped.is_set():
            try:
                if len(s3lib.list_objects(s3, s3lib.S3Uri(bucket, "dvc/"))) >= pushed + 3:
                    stop()
                    stopped.set()
            except s3lib.S3Error:
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=stop_mid_push, daemon=True)
    watcher.start()
    try:
        state = retrain(drops=str(area.uri), return_state=True)
    finally:
        stopped.set()
        watcher.join(10)
        start()
    assert state.is_failed() and state.message.startswith("push: dvc push failed"), state.message
    assert len(list((merged / "images").iterdir())) == 40  # merged whole and versioned (locally)
    assert (project / "data/raw/base.dvc").read_bytes() != before and not _cloud_in_sync(project)
    assert area.incoming() == ["a"]  # archived only once it is pushed and committed

    # 3. back: the next run pushes, commits and archives; the drop is not taken twice
    state = retrain(drops=str(area.uri), return_state=True)
    assert state.is_completed(), state.message
    assert [o["status"] for o in state.result()["drops"]] == ["already merged"]
    assert len(list((merged / "images").iterdir())) == 40
    assert _merge_commits(project, "a") == 1 and _cloud_in_sync(project)
    assert area.incoming() == [] and area.names("accepted") == ["a"]


def test_mlflow_artifacts_on_a_stopped_s3_go_to_the_buffer_and_sync_uploads_them(s3_server, tmp_path, monkeypatch):
    """An MLflow server whose artifacts live in S3 (proxied): S3 stops, the server answers 5xx to uploads;
    the stage's run moves to the buffer and `sync` uploads its artifacts once S3 is back."""
    from mlflow.tracking import MlflowClient

    from wsss.settings import TrackingSettings
    from wsss.tracking import start_stage_run
    from wsss.tracking.store import BACKOFF, JITTER, RETRIES, TIMEOUT
    from wsss.tracking.sync import sync

    endpoint, stop, start = s3_server
    bucket = f"art{free_port()}"
    s3lib.ensure_bucket(s3lib.client(endpoint), bucket)
    for key in (RETRIES, BACKOFF, JITTER, TIMEOUT):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    files = {name: tmp_path / f"{name}.txt" for name in ("before", "after")}
    for name, path in files.items():
        path.write_text(name)
    env = {"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
    with MlflowServer(tmp_path / "mlflow", artifacts=f"s3://{bucket}/mlflow", env=env) as server:
        tracking = TrackingSettings(uri=server.url, experiment="s3-artifacts", timeout=5, retries=1)
        with start_stage_run("artifacts", {"a": 1}, tracking=tracking) as run:
            run.log_artifact(files["before"], "logged")
            stop()
            try:
                run.log_artifact(files["after"], "logged")
                assert run.buffered
            finally:
                start()
        assert "logged/after.txt" not in str(s3lib.list_objects(s3lib.client(endpoint), s3lib.S3Uri(bucket, "mlflow/")))
        report = sync(server.url, root=tmp_path, log=lambda line: None, tracking=tracking)
        [server_run] = report.synced.values()
        client = MlflowClient(server.url)
        assert sorted(a.path for a in client.list_artifacts(server_run, "logged")) == ["logged/after.txt",
                                                                                    "logged/before.txt"]
        keys = [o["key"] for o in s3lib.list_objects(s3lib.client(endpoint), s3lib.S3Uri(bucket, "mlflow/"))]
        assert any(k.endswith(f"{server_run}/artifacts/logged/after.txt") for k in keys), keys
