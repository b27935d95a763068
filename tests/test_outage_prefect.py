"""Prefect API outages with a persistent server (`prefect server start` on 127.0.0.1, started, killed and
restarted here): a stage whose API disappears mid-run keeps computing and writes its outputs, and no flow
run is left RUNNING after `kill -9`, even when the rerun has nothing to do. The stage is a tiny one of the
test's (Prefect tasks writing files slowly), so that the faults land where the test wants them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO
from helpers.servers import PrefectServer

pytestmark = pytest.mark.slow

SLOW_STAGE = '''"""A stage of the tests: 2 shards (Prefect tasks) write out/0.txt .. out/{N-1}.txt, one per DELAY s."""
import os
import time
from pathlib import Path

from stages.common import main, stage

OUT, N = Path("out"), int(os.environ.get("SLOW_N", "8"))


def shard(delay, k):
    for i in range(k, N, 2):
        if not (OUT / f"{i}.txt").exists():
            time.sleep(delay)
            (OUT / f"{i}.txt").write_text("done")
    return k


def has_work(settings):
    return any(not (OUT / f"{i}.txt").exists() for i in range(N))


@stage("slow", ["toyworld"], has_work=has_work)
def slow(settings, run):
    from prefect import task, unmapped

    OUT.mkdir(exist_ok=True)
    futures = task(shard, name="slow-shard").map(unmapped(float(os.environ.get("SLOW_DELAY", "0.5"))), range(2))
    [f.result() for f in futures]
    files = len(list(OUT.glob("*.txt")))
    run.log_metrics({"files": files})
    (OUT / "finished").write_text("")
    time.sleep(float(os.environ.get("SLOW_LINGER", "0")))  # the end of a stage: outputs written, flow still open
    return {"files": files}


if __name__ == "__main__":
    main(slow)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with PrefectServer(tmp_path_factory.mktemp("prefect-home")) as server:
        yield server


def _project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text(yaml.safe_dump({"tracking": {"experiment": "prefect-outage"}}))
    (root / "slowstage.py").write_text(SLOW_STAGE)
    return root


def _stage(root: Path, api: str, **env) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "WSSS_PARAMS", "DVC_ROOT")}
    base |= {"PYTHONPATH": f"{root}{os.pathsep}{REPO}", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
             "PREFECT_API_URL": api, "PREFECT_LOGGING_LEVEL": "INFO", **env}
    return subprocess.Popen([sys.executable, "-m", "slowstage"], cwd=root, env=base, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)


def _flow_run(api: str, run_id: str) -> dict:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / ".wsss/prefect").glob("*.json"))]


def test_a_stage_whose_prefect_api_dies_keeps_computing_and_its_run_is_ended_later(server, tmp_path):
    root = _project(tmp_path / "p")
    # Prefect's own client retry setting, lowered: the stage notices the outage in seconds, not a minute
    proc = _stage(root, server.url, PREFECT_CLIENT_MAX_RETRIES="1", SLOW_N="8")
    _wait_for(root / "out/1.txt", proc)
    server.stop()
    try:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        assert sorted(p.name for p in (root / "out").glob("*.txt")) == [f"{i}.txt" for i in range(8)]
        warnings = [ln for ln in err.splitlines() if ln.startswith("warning: the Prefect API")]
        assert len(warnings) == 1 and "during slow, which went on without it" in warnings[0], err
        assert not [ln for ln in err.splitlines() if ln.startswith("error:")], err
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        [run] = client.search_runs([client.get_experiment_by_name("prefect-outage").experiment_id],
                                   filter_string="tags.`dvc.stage` = 'slow'")
        assert run.info.status == "FINISHED" and run.data.metrics["files"] == 8
        [record] = _records(root)
        assert record["outcome"] == "COMPLETED"
    finally:
        server.start()  # back, same database
    assert _flow_run(server.url, record["flow_run"])["state_type"] == "RUNNING"  # nobody could end it
    rerun = _stage(root, server.url)  # nothing to do: still, it reports the lost run's end
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0 and "slow: nothing to do" in out, out + err
    assert f"flow run {record['flow_run']} marked COMPLETED (its stage had finished without the API)" in err
    state = _flow_run(server.url, record["flow_run"])
    assert state["state_type"] == "COMPLETED" and "Prefect API stopped answering" in state["state"]["message"]
    assert _records(root) == []


def test_kill_9_at_the_end_of_a_stage_then_a_rerun_with_nothing_to_do_ends_the_flow_run(server, tmp_path):
    root = _project(tmp_path / "p")
    proc = _stage(root, server.url, SLOW_N="2", SLOW_DELAY="0", SLOW_LINGER="120")
    _wait_for(root / "out/finished", proc)  # every output written, the flow run still RUNNING
    proc.kill()
    proc.communicate(timeout=30)
    [record] = _records(root)
    assert _flow_run(server.url, record["flow_run"])["state_type"] == "RUNNING"
    start = time.monotonic()
    rerun = _stage(root, server.url, SLOW_N="2")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0 and "slow: nothing to do" in out, out + err
    assert f"slow: flow run {record['flow_run']} marked CRASHED (its stage process was gone)" in err
    assert time.monotonic() - start < 30  # no Prefect start-up: a directory listing and two HTTP calls
    run = _flow_run(server.url, record["flow_run"])
    assert run["state_type"] == "CRASHED"
    tasks = httpx.post(f"{server.url}/task_runs/filter", json={"flow_runs": {"id": {"any_": [record["flow_run"]]}}},
                       timeout=10).json()
    assert tasks and {t["state_type"] for t in tasks} <= {"COMPLETED", "CRASHED"}
    assert _records(root) == []
    again = _stage(root, server.url, SLOW_N="2")  # once
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "marked" not in err


def test_prefect_zombie_detection_is_installed_once_on_the_server(server, tmp_path):
    """A host that never comes back: Prefect's own automation (heartbeats missing → CRASHED) is on the server."""
    env = {**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "PREFECT_API_URL": server.url}
    lines = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "wsss.cli", "infra", "prefect-zombies", "--within", "300"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        lines.append(done.stdout.strip())
    assert lines[0].endswith(": created") and lines[1].endswith(": present")
    [automation] = httpx.post(f"{server.url}/automations/filter", json={}, timeout=10).json()
    trigger = automation["trigger"]
    assert trigger["after"] == ["prefect.flow-run.heartbeat"] and trigger["posture"] == "Proactive"
    assert trigger["within"] == 300 and "prefect.flow-run.Completed" in trigger["expect"]
    assert automation["actions"][0]["type"] == "change-flow-run-state"
    assert automation["actions"][0]["state"] == "CRASHED"
