"""MLflow outages cost no work: a real `mlflow server` on 127.0.0.1, killed while a stage runs. The stage
gives up on it within MLflow's bounded retries, goes on into the local buffer, succeeds, and DVC records
it; `wsss tracking sync` later sends the run, the same as an uninterrupted one, and a second sync sends
nothing. `tracking.on_outage: fail` stops within the same bound instead. `evaluate` keeps its evaluation
when registration finds the server gone: its rerun, or the sync, registers and gates without evaluating
again."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO
from helpers.projects import stage_project
from helpers.servers import MlflowServer

pytestmark = pytest.mark.slow
PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
CAMS_DVC = """stages:
  cams:
    cmd: python -m stages.cams
    deps: [prepared]
    params: [cams]
    outs: [cams]
"""
NUM = 48  # images: the server is killed once a few CAM files exist, with most still to compute


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `mlflow server` for the module, at a fixed address: tests kill and restart it, or freeze it."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


def _env(root: Path, uri: str) -> dict:
    """A stage's environment: `uri` as its tracking server, and the worker's Prefect API (the session's
    test harness) shared, so that no stage boots one of its own (seconds each)."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "WSSS_PARAMS", "DVC_ROOT")
           and not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "PATH": PATH,
            "PREFECT_API_URL": PREFECT_API_URL.value()}


def _wsss(root: Path, uri: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsss.cli", *args], cwd=root, env=_env(root, uri),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def template(tmp_path_factory, prefect_harness):
    """A DVC project whose `cams` stage has work: a prepared toy world, overlays drawn (an artifact)."""
    root = stage_project(tmp_path_factory.mktemp("outage-template") / "p", NUM, 0)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["cams"]["overlays"] = 2
    params["tracking"] = {"experiment": "outage"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text(CAMS_DVC)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    return root


def _copy(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, symlinks=True)
    return dst


def _runs(uri: str, stage: str, experiment: str = "outage"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`dvc.stage` = '{stage}'")


VOLATILE = ("mlflow.parentRunId", "wsss.pid", "wsss.pid_started", "wsss.boot", "mlflow.user", "wsss.ended_by")
TIMED = ("seconds", "images_per_second", "megapixels_per_second")


def _picture(client: MlflowClient, run) -> dict:
    """What a run records, ids and clock times aside."""
    rid = run.info.run_id
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])

    def listing(path=None):
        out = []
        for a in client.list_artifacts(rid, path):
            out += listing(a.path) if a.is_dir else [a.path]
        return sorted(out)

    return {"name": run.info.run_name, "status": run.info.status, "params": run.data.params,
            "metrics": {k: [(m.step, None if k in TIMED else m.value) for m in client.get_metric_history(rid, k)]
                        for k in run.data.metrics},
            "tags": {k: v for k, v in run.data.tags.items() if k not in VOLATILE and not k.startswith("wsss.tracking.")},
            "artifacts": listing(),
            "parent": (parent.info.run_name, parent.info.status, parent.data.tags.get("wsss.pipeline"))}


def test_a_server_killed_mid_stage_costs_no_work_and_sync_replays_the_run(template, server, tmp_path):
    up, down = _copy(template, tmp_path / "up"), _copy(template, tmp_path / "down")
    params = yaml.safe_load((up / "params.yaml").read_text())
    params["tracking"]["experiment"] = "reference"
    (up / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, "-m", "stages.cams"], cwd=up, env=_env(up, server.url),  # stays up
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, [reference] = _runs(server.url, "cams", "reference")
    expected = _picture(client, reference)
    assert expected["artifacts"] and expected["metrics"]["images"] == [(0, float(NUM))]

    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "cams"], cwd=down, env=_env(down, server.url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while len(list((down / "cams").glob("*.npz"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    server.stop()  # mid-run: its run, parent and params are on the server; the rest is not
    try:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        warnings = [ln for ln in (out + err).splitlines() if "MLflow server" in ln and "does not answer" in ln]
        assert len(warnings) == 1 and "wsss tracking sync" in warnings[0], out + err
        assert "Traceback" not in out + err and "Retrying" not in out + err
        assert len(list((down / "cams").glob("*.npz"))) == NUM
        assert "cams:" in (down / "dvc.lock").read_text()  # DVC recorded the stage
        assert "1 run(s) to sync" in _wsss(down, server.url, "tracking", "ls").stdout
    finally:
        server.start()  # back, same address and store
    first = _wsss(down, server.url, "tracking", "sync")
    assert first.returncode == 0 and "synced nogit:cams (FINISHED)" in first.stdout, first.stdout + first.stderr
    client, [synced] = _runs(server.url, "cams")  # the run the server had started, completed
    expected["parent"] = (expected["parent"][0], "FINISHED", expected["parent"][2])
    assert _picture(client, synced) == expected
    count = len(client.search_runs([client.get_experiment_by_name("outage").experiment_id]))
    again = _wsss(down, server.url, "tracking", "sync")
    assert again.returncode == 0 and "nothing to sync" in again.stdout, again.stdout + again.stderr
    assert len(client.search_runs([client.get_experiment_by_name("outage").experiment_id])) == count


@pytest.mark.parametrize("on_outage", ["fail", "buffer"])
def test_a_hung_server_is_given_up_within_the_bound(server, tmp_path, monkeypatch, on_outage):
    """A server that accepts connections but never answers (SIGSTOP): MLflow's own retries, bounded by
    tracking.timeout/retries, give up in time; `fail` is one line, `buffer` goes on locally."""
    from wsss.settings import TrackingSettings
    from wsss.tracking import start_stage_run
    from wsss.tracking.runs import TrackingUnreachable

    from wsss.tracking.store import BACKOFF, JITTER, RETRIES, TIMEOUT

    for key in (RETRIES, BACKOFF, JITTER, TIMEOUT):  # set by the run: restored after the test
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    tracking = TrackingSettings(uri=server.url, experiment="hung", on_outage=on_outage, timeout=2, retries=1)
    bound = tracking.give_up_seconds()  # 2 × 2 s
    with start_stage_run("hung", {"a": 1}, tracking=tracking) as run:
        run.log_metrics({"x": 1.0})
        os.killpg(server.proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            if on_outage == "fail":
                with pytest.raises(TrackingUnreachable) as err:
                    run.log_metrics({"x": 2.0}, step=1)
                assert "\n" not in str(err.value) and "stopped answering" in str(err.value)
            else:
                run.log_metrics({"x": 2.0}, step=1)
                assert run.buffered
            assert time.monotonic() - start < bound + 10  # MLflow's retries, then the buffer's set-up
        finally:
            os.killpg(server.proc.pid, signal.SIGCONT)
        if on_outage == "fail":
            run.status = "FAILED"
    if on_outage == "buffer":
        local = MlflowClient(f"sqlite:///{tmp_path / '.wsss/tracking/mlflow.db'}")
        [buffered] = local.search_runs([local.get_experiment_by_name("hung").experiment_id],
                                       filter_string="tags.`dvc.stage` = 'hung'")
        assert [m.value for m in local.get_metric_history(buffered.info.run_id, "x")] == [1.0, 2.0]
        assert buffered.data.params == {"a": "1"} and buffered.info.status == "FINISHED"


def test_an_interrupted_sync_is_finished_by_the_next_and_nothing_is_sent_twice(server, tmp_path, monkeypatch):
    """A run buffered from its start (the server hung then), synced: the first sync is cut short after the
    server's run exists; the next completes that run (no second one, no metric point twice)."""
    import wsss.tracking.sync as sync_module
    from wsss.settings import TrackingSettings
    from wsss.tracking import start_stage_run
    from wsss.tracking.store import BACKOFF, JITTER, RETRIES, TIMEOUT

    for key in (RETRIES, BACKOFF, JITTER, TIMEOUT):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "notes.txt").write_text("notes")
    monkeypatch.chdir(tmp_path)
    tracking = TrackingSettings(uri=server.url, experiment="interrupted", timeout=1, retries=0)
    with _frozen(server):
        with start_stage_run("late", {"a": 1}, tracking=tracking) as run:
            assert run.buffered
            for step in range(3):
                run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            run.log_artifact(tmp_path / "notes.txt", "notes")
    real = sync_module._local_path

    def cut_short(uri):  # an interrupt after params, metrics and tags are on the server, before artifacts
        raise KeyboardInterrupt

    monkeypatch.setattr(sync_module, "_local_path", cut_short)
    with pytest.raises(KeyboardInterrupt):
        sync_module.sync(server.url, log=lambda line: None, tracking=tracking)
    monkeypatch.setattr(sync_module, "_local_path", real)
    report = sync_module.sync(server.url, log=lambda line: None, tracking=tracking)
    client, [synced] = _runs(server.url, "late", "interrupted")
    assert list(report.synced.values()) == [synced.info.run_id] and synced.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(synced.info.run_id, "loss")] == [
        (0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert [a.path for a in client.list_artifacts(synced.info.run_id, "notes")] == ["notes/notes.txt"]
    parent = client.get_run(synced.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["wsss.pipeline"] == "nogit" and parent.info.status == "FINISHED"
    assert sync_module.sync(server.url, log=lambda line: None, tracking=tracking).synced == {}


# ------------------------------------------------------------------------------ evaluate and the registry

@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, prefect_harness):
    """A project with a prepared toy world (val split) and a tiny segmenter, ready for `evaluate`."""
    root = stage_project(tmp_path_factory.mktemp("evaluate") / "p", 4, 6)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.update(train={"out": "train"}, evaluate={"out": "seg", "scales": [1.0], "flip": False, "examples": 0,
                                                    "registered_model": "outage", "device": "cpu"},
                  tracking={"experiment": "outage-eval", "timeout": 2, "retries": 0})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    _new_segmenter(root, 0)
    return root


def _evaluate(root: Path, uri: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.evaluate"], cwd=root, env=_env(root, uri),
                          capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def _frozen(server: MlflowServer):
    """The server hung (SIGSTOP): it accepts connections and never answers."""
    os.killpg(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)


def _new_segmenter(root: Path, seed: int) -> None:
    import torch

    from wsss.data.manifest import read_dataset
    from wsss.seg.infer import save_segmenter
    from wsss.seg.model import build_segmenter

    classes = read_dataset(root / "prepared").vocab.names
    torch.manual_seed(seed)
    save_segmenter(root / "train/segmenter.pt", build_segmenter("toy", len(classes) + 1, width=4).eval(), "toy", 4,
                   classes)


def test_evaluate_keeps_its_work_when_registration_finds_the_server_gone(evaluated, server):
    report = evaluated / "seg/multi_scale/metrics.json"
    record = evaluated / ".wsss/tracking/registration.json"
    with _frozen(server):
        first = _evaluate(evaluated, server.url)
    errors = [ln for ln in first.stderr.splitlines() if ln.startswith("error:")]
    assert first.returncode == 1 and len(errors) == 1, first.stdout + first.stderr
    assert "registering the segmenter" in errors[0] and "wsss tracking sync" in errors[0]
    assert "Traceback" not in first.stdout + first.stderr
    stamp = report.stat().st_mtime_ns  # the evaluation is written before registration
    assert json.loads(record.read_text())["state"] == "pending"

    # back: the sync sends the buffered run, then registers and gates from the record
    sync = _wsss(evaluated, server.url, "tracking", "sync")
    assert sync.returncode == 0 and "registry: version 1" in sync.stdout, sync.stdout + sync.stderr
    client = MlflowClient(server.url)
    assert str(client.get_model_version_by_alias("outage", "champion").version) == "1"
    _, [run] = _runs(server.url, "evaluate", "outage-eval")
    assert run.info.status == "FINISHED" and run.data.tags["registry.version"] == "1"
    assert "multi_scale.miou" in run.data.metrics
    rerun = _evaluate(evaluated, server.url)  # what DVC still owes the failed stage: nothing left
    assert rerun.returncode == 0 and "evaluate: nothing to do" in rerun.stdout, rerun.stdout + rerun.stderr
    assert report.stat().st_mtime_ns == stamp

    _new_segmenter(evaluated, 1)  # gone again, with a new segmenter: this time the rerun registers it
    with _frozen(server):
        second = _evaluate(evaluated, server.url)
    assert second.returncode == 1 and report.stat().st_mtime_ns != stamp, second.stderr
    stamp = report.stat().st_mtime_ns
    rerun = _evaluate(evaluated, server.url)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert report.stat().st_mtime_ns == stamp  # not evaluated again
    assert not record.exists()
    assert len(client.search_model_versions("name = 'outage'")) == 2
    _, runs = _runs(server.url, "evaluate", "outage-eval")
    newest = max(runs, key=lambda r: r.info.start_time)
    assert newest.data.tags["registry.version"] == "2" and "multi_scale.miou" in newest.data.metrics
