"""`wsss infra`: S3 set-up for DVC and MLflow against a moto server, MLflow artifacts proxied to S3, one-line
errors for an unreachable store or server, and the dev stack up and down. Every server listens on
127.0.0.1 and is started and stopped here."""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # moto, MLflow and Prefect servers

BIN = str(Path(sys.executable).parent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*cmd: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _wsss(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-m", "wsss.cli", *args, cwd=cwd, env=env, timeout=timeout)


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = _run(sys.executable, "-m", "dvc", *args, cwd=cwd)
    assert proc.returncode == 0, f"dvc {args}: {proc.stdout}{proc.stderr}"
    return proc


def _project(root: Path) -> Path:
    """A git + DVC repository with the MLflow launcher: what `wsss infra` needs of the project."""
    root.mkdir(parents=True, exist_ok=True)
    _run("git", "init", "-q", cwd=root)
    _dvc("init", "-q", cwd=root)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "infra").mkdir()
    shutil.copy2(REPO / "infra" / "mlflow_server.sh", root / "infra" / "mlflow_server.sh")
    shutil.copy2(REPO / "infra" / "gpu-pool.json", root / "infra" / "gpu-pool.json")  # the pool dev-up creates
    return root


def _get(url: str, timeout: float = 5) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return resp.status


def _post(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
    with opener.open(req, timeout=10) as resp:
        return resp.read()


def _kill_group(pgid: int) -> bool:
    """SIGKILL what is left of a process group (zombies aside: PID 1 reaps them); True when something was."""
    import psutil

    left = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        if left:
            os.killpg(pgid, signal.SIGKILL)
    return bool(left)


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------ s3-init

def test_s3_init_configures_dvc_and_writes_no_credentials(moto_s3, tmp_path):
    from wsss.ops.s3 import client

    root = _project(tmp_path / "repo")
    secret = {"AWS_ACCESS_KEY_ID": "AKIAWSSSTESTKEY42", "AWS_SECRET_ACCESS_KEY": "wsss-secret-never-written"}
    proc = _wsss("infra", "s3-init", "--bucket", "init-a", "--endpoint-url", moto_s3, cwd=root,
                 env={**os.environ, **secret})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 4, proc.stdout  # bucket, remote, endpoint, env file

    assert "init-a" in [b["Name"] for b in client(moto_s3).list_buckets()["Buckets"]]
    config = (root / ".dvc" / "config").read_text()
    assert "remote = storage" in config and "url = s3://init-a/wsss/dvc" in config, config
    assert moto_s3 not in config
    assert f"endpointurl = {moto_s3}" in (root / ".dvc" / "config.local").read_text()
    env = (root / ".wsss" / "s3.env").read_text()
    for line in ("export MLFLOW_ARTIFACTS=s3://init-a/wsss/mlflow", "export WSSS_DROPS=s3://init-a/wsss/drops",
                 f"export AWS_ENDPOINT_URL={moto_s3}", f"export MLFLOW_S3_ENDPOINT_URL={moto_s3}"):
        assert line in env.splitlines(), env
    for path in (p for p in root.rglob("*") if p.is_file()):
        text = path.read_bytes()
        assert not any(s.encode() in text for s in secret.values()), f"a credential in {path}"

    again = _wsss("infra", "s3-init", "--bucket", "init-a", "--endpoint-url", moto_s3, cwd=root,
                  env={**os.environ, **secret})
    assert again.returncode == 0 and "init-a" in again.stdout and "exists" in again.stdout, again.stdout + again.stderr


def test_s3_init_user_errors_are_one_line(tmp_path):
    root = _project(tmp_path / "repo")
    closed = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    proc = _wsss("infra", "s3-init", "--bucket", "b", "--endpoint-url", closed, cwd=root,
                 env={**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"})
    assert proc.returncode == 2 and closed in _one_error_line(proc.stderr)
    assert time.monotonic() - start < 30

    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    bare |= {"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
             "AWS_EC2_METADATA_DISABLED": "true"}
    proc = _wsss("infra", "s3-init", "--bucket", "b", cwd=root, env=bare)
    assert proc.returncode == 2 and "credentials" in _one_error_line(proc.stderr)
    assert not (root / ".wsss").exists()


def test_dvc_push_and_pull_through_the_remote(moto_s3, tmp_path):
    from wsss.ops.infra import s3_init
    from wsss.ops.s3 import S3Uri, client, list_objects

    root = _project(tmp_path / "repo")
    s3_init(root, "dvc-b", moto_s3)
    data = root / "data" / "x"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "b.bin").write_bytes(os.urandom(4096))
    keep = tmp_path / "original"
    shutil.copytree(data, keep)

    _dvc("add", "data/x", cwd=root)
    _dvc("push", cwd=root)
    assert len(list_objects(client(moto_s3), S3Uri.parse("s3://dvc-b/wsss/dvc"))) >= 3  # 2 files + listing
    shutil.rmtree(data)
    shutil.rmtree(root / ".dvc" / "cache")
    _dvc("pull", cwd=root)
    cmp = filecmp.dircmp(data, keep)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == sorted(p.relative_to(keep) for p in keep.rglob("*"))
    assert not cmp.diff_files and not cmp.subdirs["sub"].diff_files
    assert (data / "sub" / "b.bin").read_bytes() == (keep / "sub" / "b.bin").read_bytes()


# ------------------------------------------------------------------------------ MLflow artifacts on S3

def test_mlflow_server_stores_artifacts_in_s3(moto_s3, tmp_path):
    """infra/mlflow_server.sh after s3-init: no MLFLOW_ARTIFACTS, so .wsss/s3.env sends artifacts to S3."""
    from wsss.ops.infra import s3_init
    from wsss.ops.s3 import S3Uri, client, list_objects
    from wsss.prefect_env import stop_process
    from wsss.tracking.runs import open_store

    root = _project(tmp_path / "repo")
    s3_init(root, "mlflow-c", moto_s3)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MLFLOW_BACKEND": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = tmp_path / "mlflow.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(["bash", str(root / "infra" / "mlflow_server.sh")], cwd=tmp_path,  # not the root
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/health", server, log)
        mlflow = open_store(url)
        run = mlflow.create_run(mlflow.create_experiment("infra-c"))
        payload = tmp_path / "payload.bin"
        payload.write_bytes(os.urandom(10_000))
        mlflow.log_artifact(run.info.run_id, str(payload), "stuff")

        keys = [o["key"] for o in list_objects(client(moto_s3), S3Uri.parse("s3://mlflow-c/wsss/mlflow"))]
        assert any(k.endswith(f"{run.info.run_id}/artifacts/stuff/payload.bin") for k in keys), keys
        back = mlflow.download_artifacts(run.info.run_id, "stuff/payload.bin", str(tmp_path / "back"))
        assert Path(back).read_bytes() == payload.read_bytes()
    finally:
        stop_process(server)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while True:
        assert proc.poll() is None, f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if _get(url) == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} not up after {limit} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


# ----------------------------------------------------------------------------- unreachable MLflow server

def test_unreachable_tracking_server_is_one_line_error():
    from wsss.errors import WsssError
    from wsss.tracking.runs import open_store

    uri = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(WsssError) as err:
        open_store(uri)
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "\n" not in message and uri in message and "unreachable" in message and "MLFLOW_TRACKING_URI" in message


def _toyworld_project(tmp_path: Path, on_outage: str) -> Path:
    import yaml

    work = tmp_path / "project"
    shutil.copytree(REPO / "stages", work / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy2(REPO / name, work / name)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["tracking"]["on_outage"] = on_outage
    params["toyworld"].update(num_train=4, num_val=0)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def test_stage_with_unreachable_tracking_server_stops_in_one_line(tmp_path):
    """tracking.on_outage: fail keeps the fast, clear failure at the start."""
    work = _toyworld_project(tmp_path, "fail")
    uri = f"http://127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"MLFLOW_TRACKING_URI": uri}
    start = time.monotonic()
    proc = _run(sys.executable, "-m", "stages.toyworld", cwd=work, env=env, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and uri in errors[0] and "unreachable" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert elapsed < 60, elapsed
    assert not (work / "data").exists()


def test_stage_with_unreachable_tracking_server_buffers_its_run(tmp_path):
    """tracking.on_outage: buffer (the default): the stage runs, its run goes to the local buffer."""
    from mlflow.tracking import MlflowClient

    work = _toyworld_project(tmp_path, "buffer")
    uri = f"http://127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"MLFLOW_TRACKING_URI": uri}
    proc = _run(sys.executable, "-m", "stages.toyworld", cwd=work, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and uri in warnings[0] and "wsss tracking sync" in warnings[0], proc.stderr
    assert "Traceback" not in proc.stderr and (work / "data/raw/toyworld").is_dir()
    client = MlflowClient(f"sqlite:///{work / '.wsss/tracking/mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("wsss").experiment_id],
                               filter_string="tags.`dvc.stage` = 'toyworld'")
    assert run.info.status == "FINISHED" and run.data.tags["wsss.tracking.server"] == uri
    assert run.data.params["toyworld.num_train"] == "4" and run.data.metrics


# --------------------------------------------------------------------------------------------- dev stack

HELLO_FLOW = """
from prefect import flow


@flow
def hello():
    return 1
"""
PREFECT_YAML = """
name: t
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: "{{ $WSSS_WORKDIR }}"
deployments:
  - name: hello-gpu
    entrypoint: flows/hello.py:hello
    work_pool: {name: gpu}
"""


def test_dev_up_status_down(tmp_path):
    root = _project(tmp_path / "repo")
    (root / "flows").mkdir()
    (root / "flows" / "hello.py").write_text(HELLO_FLOW)
    (root / "prefect.yaml").write_text(PREFECT_YAML)
    ports = {"s3": _free_port(), "mlflow": _free_port(), "prefect": _free_port()}
    args = [a for name, port in ports.items() for a in (f"--{name}-port", str(port))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API_URL", "AWS_"))}
    dev = root / ".wsss" / "dev"

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = [a if a != str(ports["mlflow"]) else str(busy.getsockname()[1]) for a in args]
        proc = _wsss("infra", "dev-up", *taken, cwd=root, env=env)
    assert proc.returncode == 2 and "in use" in _one_error_line(proc.stderr) and not dev.exists()

    pids: dict = {}
    try:
        start = time.monotonic()
        up = _wsss("infra", "dev-up", *args, cwd=root, env=env, timeout=400)
        print(f"dev-up took {time.monotonic() - start:.1f} s")
        assert up.returncode == 0, up.stdout + up.stderr
        pids = json.loads((dev / "pids.json").read_text())
        assert set(pids) == {"prefect", "s3", "mlflow", "worker"}

        assert _get(f"http://127.0.0.1:{ports['mlflow']}/health") == 200
        assert _get(f"http://127.0.0.1:{ports['prefect']}/api/health") == 200
        shell = _run("bash", "-c", "set -eu; source .wsss/dev/env; env", cwd=root, env=env)
        assert shell.returncode == 0, shell.stderr
        sourced = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
        assert sourced["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['mlflow']}"
        assert sourced["PREFECT_API_URL"] == f"http://127.0.0.1:{ports['prefect']}/api"
        assert sourced["AWS_ENDPOINT_URL"] == sourced["MLFLOW_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{ports['s3']}"
        assert sourced["WSSS_DROPS"] == "s3://wsss/wsss/drops" and sourced["WSSS_WORKDIR"] == str(root)
        assert sourced["AWS_ACCESS_KEY_ID"] == "testing"
        buckets = _run(sys.executable, "-c", "import boto3; print([b['Name'] for b in "
                       "boto3.client('s3').list_buckets()['Buckets']])", cwd=root, env={**env, **sourced})
        assert "'wsss'" in buckets.stdout, buckets.stderr
        assert "endpointurl" in (root / ".dvc" / "config.local").read_text()
        assert "remote" not in (root / ".dvc" / "config").read_text()  # the team's config is untouched

        deployments = json.loads(_post(f"http://127.0.0.1:{ports['prefect']}/api/deployments/filter"))
        [hello] = [d for d in deployments if d["name"] == "hello-gpu"]
        assert hello["work_pool_name"] == "gpu", hello
        assert hello["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(root)

        status = _wsss("infra", "dev-status", cwd=root, env=env)
        assert status.stdout.count(" alive ") == 4, status.stdout
        again = _wsss("infra", "dev-up", *args, cwd=root, env=env)
        assert again.returncode == 0 and "already up" in again.stdout, again.stdout + again.stderr
    finally:
        down = _wsss("infra", "dev-down", cwd=root, env=env)
        leaked = [name for name, entry in pids.items() if _kill_group(entry["pid"])]
    assert not leaked, f"{leaked} still running after dev-down:\n{down.stdout}{down.stderr}"
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (dev / "pids.json").exists() and (dev / "mlflow.log").exists()
    assert "dev" not in _dvc("remote", "list", cwd=root).stdout
    assert _wsss("infra", "dev-down", cwd=root, env=env).returncode == 0  # idempotent
