"""Service: a real `prefect server start` — the CLI's list commands, a flow run and the UI all agree with it.

Guards the client/server pairing of the locked prefect, fastapi and pydantic: with fastapi>=0.151 an
explicit JSON null in a body field is validated instead of treated as missing, and prefect 3.8's CLI
(`flow-run ls`, `flow ls`, `deployment ls`, `work-pool ls`) fails with `422 body.limit`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT = 180  # the first start creates the database: slow on 2 cores
RUN_NAME = "cli-probe-run"
FLOW = f"""
from prefect import flow

@flow(name="cli-probe", flow_run_name="{RUN_NAME}")
def cli_probe():
    return 42

assert cli_probe() == 42
"""

# no proxy for loopback: urllib here, httpx in the prefect subprocesses
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> tuple[int, str, str]:
    with _OPENER.open(url, timeout=timeout) as resp:
        return resp.status, resp.headers.get("content-type", ""), resp.read().decode("utf-8", "replace")


def _env(home: Path, api_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_LEVEL="WARNING", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               COLUMNS="250")  # wide enough that rich does not truncate the run's name
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=_env(tmp / "server-home", None), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if _get(f"{base}/api/health", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not healthy after {STARTUP_TIMEOUT}s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield {"base": base, "env": _env(tmp / "client-home", f"{base}/api"), "log": log_path}
    finally:
        _stop(proc)


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], env=env, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)


def test_health_and_ui_are_served(prefect_server):
    status, _, body = _get(f"{prefect_server['base']}/api/health")
    assert status == 200 and body.strip() == "true"
    status, ctype, body = _get(f"{prefect_server['base']}/")
    assert status == 200 and ctype.startswith("text/html"), (status, ctype)
    assert "<html" in body.lower()


def test_flow_runs_and_cli_lists_agree_with_server(prefect_server):
    env = prefect_server["env"]
    run = subprocess.run([sys.executable, "-c", FLOW], env=env, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr

    outputs = {}
    for command in ("flow-run ls", "flow ls", "deployment ls", "work-pool ls"):
        res = _prefect(env, *command.split())
        assert res.returncode == 0, f"`prefect {command}` exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
        outputs[command] = res.stdout
    assert RUN_NAME in outputs["flow-run ls"], outputs["flow-run ls"]
    assert "COMPLETED" in outputs["flow-run ls"], outputs["flow-run ls"]
    assert "cli-probe" in outputs["flow ls"], outputs["flow ls"]


SCHEDULED = """
import time
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.schedules import CronSchedule

with get_client(sync_client=True) as client:
    flow_id = client.create_flow_from_name("cron-probe")
    deployment_id = client.create_deployment(flow_id, "every-minute", entrypoint="probe.py:probe",
        schedules=[DeploymentScheduleCreate(schedule=CronSchedule(cron="* * * * *"), active=True)])
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        runs = [r for r in client.read_flow_runs() if r.deployment_id == deployment_id]
        if runs:
            print(len(runs), "auto_scheduled" if all(r.auto_scheduled for r in runs) else "manual",
                  sorted({r.state_name for r in runs}))
            break
        time.sleep(2)
    else:
        print("no scheduled run within 90 s")
"""


def test_the_server_creates_the_runs_of_a_cron_schedule(prefect_server):
    """The scheduler service itself (it failed on SQLAlchemy 2.1: no schedule ever fired)."""
    res = subprocess.run([sys.executable, "-c", SCHEDULED], env=prefect_server["env"], capture_output=True,
                         text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "auto_scheduled ['Scheduled']" in res.stdout, res.stdout + prefect_server["log"].read_text()[-3000:]
    assert "bulk DML" not in prefect_server["log"].read_text()
