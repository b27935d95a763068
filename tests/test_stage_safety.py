"""A stage never costs a user finished work: settings are checked first and fail in one line (exit 2),
a bad setting leaves finished outputs byte for byte, and SIGINT/SIGTERM/`kill -9` stop a stage promptly
with its MLflow run ended, its Prefect API stopped and nothing left running."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO
from wsss.pids import boot_id
from helpers.projects import stage_env, stage_project

pytestmark = pytest.mark.slow


def _stage(root: Path, name: str, params: Path | None = None, timings: Path | None = None,
           api: str | None = None) -> subprocess.Popen:
    env = stage_env(root, PYTHONPATH=str(REPO), **({"WSSS_PARAMS": str(params)} if params else {}),
                    **({"WSSS_TIMINGS": str(timings)} if timings else {}), **({"PREFECT_API_URL": api} if api else {}))
    return subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _with(root: Path, name: str, section: str, **values) -> Path:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params.setdefault(section, {}).update(values)
    path = root / name
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A project whose cams and masks are done (their processes record what they imported)."""
    root = stage_project(tmp_path_factory.mktemp("finished"), 6, 2)
    for name in ("cams", "masks"):
        proc = _stage(root, name, timings=root / "timings.jsonl")
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return root


def test_stages_import_only_what_their_work_needs(finished):
    imported = {r["stage"]: set(r["imported"]) for r in map(json.loads, (finished / "timings.jsonl").open())}
    assert {"torch", "open_clip"} <= imported["cams"] and "great_expectations" not in imported["cams"]
    assert not imported["masks"] & {"torch", "torchvision", "open_clip", "great_expectations"}


def test_stage_with_nothing_to_do_stops_in_seconds(finished):
    """Every output current: no Prefect API, no MLflow run, no model loaded."""
    runs = len(_runs(finished, "cams"))
    for name in ("cams", "masks"):
        start = time.monotonic()
        proc = _stage(finished, name)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert f"{name}: nothing to do" in out and time.monotonic() - start < 10
    assert len(_runs(finished, "cams")) == runs


SETTINGS_ERRORS = [
    ("cams", {"box_treshold": 0.5}, "cams.box_treshold: unknown setting; did you mean cams.box_threshold?"),
    ("cams", {"batch_size": "8"}, "cams.batch_size: expected an integer, got '8'"),
    ("cams", {"box_threshold": 1.5}, "cams.box_threshold: expected a value ≥ 0 and < 1, got 1.5"),
    ("masks", {"crf": {"iteration": 3}}, "masks.crf.iteration: unknown setting; did you mean masks.crf.iterations?"),
    ("clip", {"precision": "fp8"}, "clip.precision: expected one of fp32/fp16/bf16, got 'fp8'"),
]


@pytest.mark.parametrize("section, values, message", SETTINGS_ERRORS)
def test_settings_error_is_one_line_exit_2_within_seconds(finished, section, values, message):
    before = {d: _digest(finished / d) for d in ("cams", "masks")}
    params = _with(finished, "bad.yaml", section, **values)
    start = time.monotonic()
    proc = _stage(finished, section if section in ("cams", "masks") else "cams", params)
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - start < 5
    assert proc.returncode == 2, out + err
    assert err.strip() == f"error: {params}: {message}"
    assert {d: _digest(finished / d) for d in ("cams", "masks")} == before


@pytest.mark.parametrize("section, values, message", [
    ("clip", {"pretrained": "assets/missing.pt"}, "checkpoint file assets/missing.pt not found"),
    ("clip", {"model": "ViT-Nope-16"}, "unknown CLIP model 'ViT-Nope-16'"),
    ("text", {"background": "no-such-words.txt"}, "text.background: 'no-such-words.txt' is neither"),
])
def test_bad_setting_found_in_the_stage_keeps_every_finished_file(finished, section, values, message):
    before = {d: _digest(finished / d) for d in ("cams", "masks")}
    params = _with(finished, "bad.yaml", section, **values)
    proc = _stage(finished, "cams", params)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out + err
    assert message in err and "Traceback" not in err
    assert "retry" not in (out + err).lower()
    assert {d: _digest(finished / d) for d in ("cams", "masks")} == before


def _wait_for_outputs(folder: Path, proc: subprocess.Popen, n: int = 2, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"stage ended early: {proc.communicate()}")
        if folder.exists() and len(list(folder.glob("[!.]*.npz"))) >= n:
            return
        time.sleep(0.2)
    raise AssertionError("no output appeared")


def _runs(root: Path, stage: str):
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("safety")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`dvc.stage` = '{stage}'",
                              order_by=["attributes.start_time ASC"])


BUSY = 480  # images: each interrupt test must stop the stage with images left, after the earlier ones (one
# thread does ~50 toy images/s: the persistent-server test's checks, ~2 s with its stage running, take ~120)


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    """A project with enough images that the cams stage runs for a while."""
    return stage_project(tmp_path_factory.mktemp("busy"), BUSY, 0)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_the_stage_within_seconds(busy, sig, code):
    proc = _stage(busy, "cams")
    _wait_for_outputs(busy / "cams", proc, n=len(list((busy / "cams").glob("*.npz"))) + 2)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the stage runs its own Prefect API"
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 30  # the batch in flight, then the MLflow/Prefect bookkeeping
    assert proc.returncode == code, err[-3000:]
    assert "interrupted: cams stopped" in err
    assert "connection attempts failed" not in (out + err).lower()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "the stage's Prefect API outlived it"
    assert _runs(busy, "cams")[-1].info.status == "KILLED"
    done = list((busy / "cams").glob("*.npz"))
    assert len(done) < BUSY and not list((busy / "cams").glob(".*"))  # finished files whole, no temp files


@pytest.fixture(scope="module")
def team_api(tmp_path_factory):
    """A Prefect API that outlives the stages (a team's server), on 127.0.0.1 with a database of its own."""
    from wsss.prefect_env import launch_api_server, stop_process, wait_until_ready

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("team-prefect")))
        proc, url = launch_api_server()
    try:
        wait_until_ready(url, proc)
        yield url
    finally:
        stop_process(proc)


def _flow_runs(api: str, **criteria) -> list[dict]:
    import httpx

    return httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": criteria, "sort": "START_TIME_ASC"}).json()


def test_kill_9_on_a_persistent_prefect_server_the_next_stage_marks_the_flow_run_crashed(busy, team_api):
    import httpx

    proc = _stage(busy, "cams", api=team_api)
    _wait_for_outputs(busy / "cams", proc, n=len(list((busy / "cams").glob("*.npz"))) + 2)
    proc.kill()
    proc.communicate(timeout=30)
    [orphan] = _flow_runs(team_api)
    assert orphan["state_type"] == "RUNNING" and "wsss-stage" in orphan["tags"]  # the server outlived it
    assert f"wsss-owner:{boot_id()}/{proc.pid}/" in " ".join(orphan["tags"])
    tasks = httpx.post(f"{team_api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [orphan["id"]]}}}).json()
    assert "RUNNING" in {t["state_type"] for t in tasks}

    nxt = _stage(busy, "cams", api=team_api)  # the next stage on this host: the orphan first
    try:
        deadline = time.monotonic() + 300
        while _flow_runs(team_api, id={"any_": [orphan["id"]]})[0]["state_type"] != "CRASHED":
            assert nxt.poll() is None and time.monotonic() < deadline, nxt.communicate()[1][-3000:]
            time.sleep(1)
        _wait_for_outputs(busy / "cams", nxt, n=len(list((busy / "cams").glob("*.npz"))) + 1)
        runs = _flow_runs(team_api)
        assert [r["state_type"] for r in runs] == ["CRASHED", "RUNNING"]  # its own run, alive, is left alone
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from wsss.prefect_runs import mark_crashed_runs

        with temporary_settings({PREFECT_API_URL: team_api}):
            assert mark_crashed_runs() == []  # nothing else is an orphan
    finally:
        nxt.send_signal(signal.SIGTERM)
        out, err = nxt.communicate(timeout=120)
    assert f"cams: flow run {orphan['id']} marked CRASHED (its stage process was gone)" in err
    assert runs[0]["state"]["message"] == ("its stage process was gone (killed outright); marked by a later stage "
                                           "on its host")
    tasks = httpx.post(f"{team_api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [orphan["id"]]}}}).json()
    assert tasks and {t["state_type"] for t in tasks} <= {"COMPLETED", "CRASHED"}


def test_kill_9_leaves_no_server_and_the_next_start_ends_the_run(busy):
    proc = _stage(busy, "cams")
    _wait_for_outputs(busy / "cams", proc, n=len(list((busy / "cams").glob("*.npz"))) + 2)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()
    proc.communicate(timeout=30)
    assert len(list((busy / "cams").glob("*.npz"))) < BUSY, "killed only after it finished: use more images"
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "the Prefect API outlived its stage"
    killed = _runs(busy, "cams")[-1]
    assert killed.info.status == "RUNNING"  # nobody could end it
    proc = _stage(busy, "cams")  # the rerun resumes, and first ends the orphaned run
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    runs = {r.info.run_id: r for r in _runs(busy, "cams")}
    assert runs[killed.info.run_id].info.status == "KILLED"
    assert list(runs.values())[-1].info.status == "FINISHED"
    assert len(list((busy / "cams").glob("*.npz"))) == BUSY


def test_mlflow_logs_the_settings_that_ran(finished):
    """With WSSS_PARAMS the run logs that file's values (and the defaults it left out), not params.yaml's."""
    params = _with(finished, "other.yaml", "masks", confidence=0.8)
    proc = _stage(finished, "masks", params)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    logged = _runs(finished, "masks")[-1].data.params
    assert logged["masks.confidence"] == "0.8" and logged["masks.crf.iterations"] == "10"
    assert logged["masks.alpha"] == "1.0"  # typed: the float that ran, even where the file says nothing
