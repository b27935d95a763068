"""`wsss infra`: S3 storage for DVC and MLflow (`s3-init`), and a local stack for development (`dev-up`,
`dev-down`, `dev-status`): an S3 server (moto), MLflow with its artifacts in that S3, a Prefect server, the
`gpu` process work pool and a worker polling it.

Credentials only ever come from the environment (or an AWS profile); nothing here writes one, except the
dev stack's env file, which holds moto's fixed `testing` pair. The dev stack's processes each run in their
own session, so they outlive the command; `.wsss/dev/pids.json` records them (pid and start time, so a
reused pid is never signalled) for `dev-down`. Its DVC remote and S3 env live in files that are not in
git (`.dvc/config.local`, `.wsss/dev/`): starting it never changes the team's real S3 set-up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer

from wsss.errors import WsssError
from wsss.io import write_json, write_text
from wsss.ops.s3 import S3Uri, client, endpoint_from_env, ensure_bucket, s3_errors
from wsss.pids import is_running, started
from wsss.prefect_env import DEFAULTS as PREFECT_DEFAULTS
from wsss.prefect_env import stop_process
from wsss.settings import project_root

infra_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                        help="S3 storage for DVC and MLflow, and a local S3 + MLflow + Prefect stack for development.")

HOST = "127.0.0.1"
POOL = "gpu"
MLFLOW_SCRIPT = "infra/mlflow_server.sh"
POOL_TEMPLATE = "infra/gpu-pool.json"  # the GPU pool's base job template (process worker)
DEV_BUCKET, DEV_PREFIX, DEV_REMOTE = "wsss", "wsss", "dev"
DEV_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
AWS_ELSEWHERE = ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")  # would win over ours


class InfraError(WsssError):
    """A storage or service set-up step failed: names the step (and its log) and the problem."""


# ---------------------------------------------------------------------------------------------- s3-init

def _dvc_project() -> Path:
    root = project_root()
    if not (root / ".dvc").is_dir():
        raise InfraError(f"{root}: not a DVC project (no .dvc folder): run this inside the project")
    return root


def _dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode:
        last = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[-1]
        raise InfraError(f"dvc {' '.join(args[:2])}: {last.removeprefix('ERROR: ')}")
    return proc


def _require_credentials() -> None:
    """boto3 would only say so at the first request, after its retries."""
    import boto3

    if boto3.session.Session().get_credentials() is None:
        raise InfraError("S3 credentials: none found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                         "AWS_PROFILE) in the environment")


def s3_env(base: S3Uri, endpoint_url: str | None) -> dict[str, str]:
    """What MLflow's server, the drops flow and boto3 need to find the storage (no credentials)."""
    env = {"MLFLOW_ARTIFACTS": str(base.join("mlflow")).rstrip("/"), "WSSS_DROPS": str(base.join("drops")).rstrip("/")}
    if endpoint_url:
        env |= {"AWS_ENDPOINT_URL": endpoint_url, "MLFLOW_S3_ENDPOINT_URL": endpoint_url}
    return env


def write_env(path: Path, values: dict[str, str], header: str, unset: tuple[str, ...] = ()) -> None:
    """A file to `source`; replaced whole, so a reader never sees half of it."""
    write_text(path, f"# {header}\n" + (f"unset {' '.join(unset)}\n" if unset else "")
               + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))


S3_TIMEOUTS = {"connect_timeout": 10, "read_timeout": 60}  # DVC's S3 remote options, as boto3's client (wsss.ops.s3)


def s3_init(root: Path, bucket: str, endpoint_url: str | None = None, prefix: str = "wsss",
            remote: str = "storage", env_file: Path | None = None, local: bool = False) -> dict[str, str]:
    """Bucket, default DVC remote `s3://<bucket>/<prefix>/dvc` (in `.dvc/config`, or `.dvc/config.local`
    with `local`; the endpoint always in the local file) and the env file; returns the env file's values.
    No endpoint given: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL (as boto3's), else AWS."""
    base = S3Uri.parse(f"s3://{bucket}/{prefix}")
    endpoint_url = endpoint_from_env(endpoint_url)
    _require_credentials()
    where = f" at {endpoint_url}" if endpoint_url else ""
    with s3_errors(f"s3://{bucket}{where}"):
        created = ensure_bucket(client(endpoint_url, retries=2), bucket)
    typer.echo(f"bucket s3://{bucket}{where}: {'created' if created else 'exists'}")
    url = str(base.join("dvc")).rstrip("/")
    level = ["--local"] if local else []
    _dvc(root, "remote", "add", *level, "-d", "-f", remote, url)
    for option, seconds in S3_TIMEOUTS.items():  # a store that stops answering: bounded waits, not minutes
        _dvc(root, "remote", "modify", *level, remote, option, str(seconds))
    typer.echo(f"DVC remote {remote} (default): {url} in .dvc/config{'.local' if local else ''}")
    if endpoint_url:
        _dvc(root, "remote", "modify", "--local", remote, "endpointurl", endpoint_url)
        typer.echo(f"DVC remote {remote}: endpoint {endpoint_url} in .dvc/config.local")
    else:  # an endpoint left there by an earlier s3-init would send AWS's remote elsewhere
        _dvc(root, "remote", "modify", "--local", "--unset", remote, "endpointurl", check=False)
    values = s3_env(base, endpoint_url)
    env_file = env_file or root / ".wsss" / "s3.env"
    write_env(env_file, values, "written by `wsss infra s3-init`; no credentials here, they come from the environment")
    shown = env_file.relative_to(root) if env_file.is_relative_to(root) else env_file
    typer.echo(f"wrote {shown}: {', '.join(values)}")
    return values


@infra_app.command("s3-init")
def s3_init_cmd(bucket: str = typer.Option(..., help="Bucket (created unless it exists)."),
                endpoint_url: Optional[str] = typer.Option(None, help="S3-compatible endpoint (MinIO, moto, ...); "
                                                           "default: $AWS_ENDPOINT_URL, else AWS."),
                prefix: str = typer.Option("wsss", help="Prefix under which dvc/, mlflow/ and drops/ live."),
                remote: str = typer.Option("storage", help="Name of the default DVC remote.")):
    """Create the bucket, make it the default DVC remote and write .wsss/s3.env (MLflow artifacts, drops)
    for infra/mlflow_server.sh and the flows. Credentials: from the environment only."""
    s3_init(_dvc_project(), bucket, endpoint_url, prefix, remote)


# ------------------------------------------------------------------------------------------ the dev stack

def dev_dir(root: Path) -> Path:
    return root / ".wsss" / "dev"


def _read_pids(dev: Path) -> dict[str, dict]:
    try:
        return json.loads((dev / "pids.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_pids(dev: Path, pids: dict[str, dict]) -> None:
    write_json(dev / "pids.json", pids)


def _alive(entry: dict) -> bool:
    return is_running(entry["pid"], entry["started"])


class _Recorded:
    """A process from pids.json, shaped like the `Popen` that `prefect_env.stop_process` stops."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        return None if started(self.pid) is not None else 0

    def wait(self, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (30 if timeout is None else timeout)
        while self.poll() is None:
            if time.monotonic() > deadline:
                if timeout is None:  # stuck even after SIGKILL (uninterruptible): give up waiting
                    return 0
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.1)
        return 0


def _stop(entry: dict) -> bool:
    """Stop a recorded process and whatever is left of its process group; False when it was not running.
    A pid now held by another process is left alone."""
    pid, was_alive = entry["pid"], _alive(entry)
    if was_alive:
        stop_process(_Recorded(pid))
    elif started(pid) is not None:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # children that outlived the group leader (a session of our own)
    return was_alive


def _check_ports(ports: dict[str, int]) -> None:
    if len(set(ports.values())) < len(ports):
        raise InfraError(f"ports {ports}: each service needs its own port")
    for name, port in ports.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
            try:
                s.bind((HOST, port))
            except OSError:
                raise InfraError(f"port {port} on {HOST} ({name}) is in use: pick another with --{name}-port") from None


def _http_ok(url: str, data: bytes | None = None) -> bool:
    """GET (POST with `data`) on the loopback, never through a proxy: 200 (and, posted, a non-empty list)."""
    import urllib.request

    try:
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=3) as resp:
            return resp.status == 200 and (data is None or json.loads(resp.read()) != [])
    except (OSError, ValueError):  # URLError, HTTPError, resets, timeouts, not JSON yet
        return False


def _s3_ok(endpoint: str) -> Callable[[], bool]:
    s3 = client(endpoint, retries=0)

    def ready() -> bool:
        try:
            s3.list_buckets()
            return True
        except Exception:  # not listening yet (botocore's connection errors)
            return False

    return ready


class _Stack:
    """The dev stack being started: its folder, environment and processes (recorded as they start)."""

    def __init__(self, root: Path, env: dict[str, str], timeout: float):
        self.root, self.dev, self.env, self.timeout = root, dev_dir(root), env, timeout
        self.procs: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, dict] = {}

    def log(self, name: str) -> Path:
        return (self.dev / f"{name}.log").relative_to(self.root)

    def spawn(self, name: str, cmd: list[str], url: str = "", **env: str) -> None:
        with open(self.root / self.log(name), "wb") as out:
            proc = subprocess.Popen(cmd, cwd=self.root, env={**self.env, **env}, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.pids[name] = {"pid": proc.pid, "started": started(proc.pid), "url": url, "log": str(self.log(name))}
        _write_pids(self.dev, self.pids)

    def wait(self, name: str, ready: Callable[[], bool]) -> None:
        proc, deadline = self.procs[name], time.monotonic() + self.timeout
        while not ready():
            if proc.poll() is not None:
                raise InfraError(f"{name} exited with code {proc.returncode} while starting: see {self.log(name)}")
            if time.monotonic() > deadline:
                raise InfraError(f"{name} did not answer within {self.timeout:.0f} s: see {self.log(name)}")
            time.sleep(0.5)

    def prefect(self, *args: str, log: str) -> subprocess.CompletedProcess:
        with open(self.root / self.log(log), "wb") as out:
            return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=self.root, env=self.env,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=600)

    def stop_all(self) -> None:
        for entry in reversed(self.pids.values()):
            _stop(entry)
        (self.dev / "pids.json").unlink(missing_ok=True)


def _dev_env(root: Path, ports: dict[str, int], s3: dict[str, str]) -> dict[str, str]:
    """What the stack's processes and a shell using it need (`.wsss/dev/env`)."""
    return {"PREFECT_API_URL": f"http://{HOST}:{ports['prefect']}/api",
            "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports['mlflow']}", **DEV_CREDENTIALS,
            "AWS_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"], "MLFLOW_S3_ENDPOINT_URL": s3["MLFLOW_S3_ENDPOINT_URL"],
            "WSSS_DROPS": s3["WSSS_DROPS"], "WSSS_WORKDIR": str(root)}


def _start_servers(stack: _Stack, ports: dict[str, int], endpoint: str) -> None:
    """S3, then MLflow on it; Prefect boots meanwhile (its first start creates its database: the longest)."""
    root, dev = stack.root, stack.dev
    stack.spawn("prefect", [sys.executable, "-m", "prefect", "server", "start", "--host", HOST,
                            "--port", str(ports["prefect"]), "--analytics-off"], url=f"http://{HOST}:{ports['prefect']}",
                PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{dev / 'prefect.db'}")
    stack.spawn("s3", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(ports["s3"])], url=endpoint)
    stack.wait("s3", _s3_ok(endpoint))
    typer.echo(f"s3: moto server (in memory) at {endpoint}, credentials testing/testing")
    s3 = s3_init(root, DEV_BUCKET, endpoint, DEV_PREFIX, DEV_REMOTE, env_file=dev / "s3.env", local=True)
    mlflow_url = f"http://{HOST}:{ports['mlflow']}"
    stack.spawn("mlflow", ["bash", str(root / MLFLOW_SCRIPT)], url=mlflow_url, MLFLOW_ARTIFACTS=s3["MLFLOW_ARTIFACTS"],
                MLFLOW_BACKEND=f"sqlite:///{dev / 'mlflow.db'}", MLFLOW_HOST=HOST, MLFLOW_PORT=str(ports["mlflow"]),
                MLFLOW_WORKERS="1", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # GenAI jobs: 35 s more to start
    stack.wait("mlflow", lambda: _http_ok(f"{mlflow_url}/health"))
    typer.echo(f"mlflow: {mlflow_url} (artifacts in {s3['MLFLOW_ARTIFACTS']})")
    stack.wait("prefect", lambda: _http_ok(f"{stack.env['PREFECT_API_URL']}/health"))
    typer.echo(f"prefect: {stack.pids['prefect']['url']} (API {stack.env['PREFECT_API_URL']})")


def _start_worker(stack: _Stack) -> None:
    template = stack.root / POOL_TEMPLATE
    created = stack.prefect("work-pool", "create", POOL, "--type", "process",
                            *(["--base-job-template", str(template)] if template.is_file() else []), log="work-pool")
    text = (stack.root / stack.log("work-pool")).read_text(errors="replace")
    if created.returncode and "already exists" not in text:
        raise InfraError(f"prefect work-pool create {POOL} failed (exit {created.returncode}): see {stack.log('work-pool')}")
    typer.echo(f"work pool {POOL}: {'exists' if created.returncode else 'created'} (process)")
    stack.spawn("worker", [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL])
    api = stack.env["PREFECT_API_URL"]
    stack.wait("worker", lambda: _http_ok(f"{api}/work_pools/{POOL}/workers/filter", data=b"{}"))
    typer.echo(f"worker: polling pool {POOL} in {stack.root}")


def _deploy(stack: _Stack) -> None:
    """Deployments of prefect.yaml, if the project has one; a failure leaves the stack up (a warning)."""
    if not (stack.root / "prefect.yaml").is_file():
        typer.echo("deployments: no prefect.yaml, none created")
        return
    done = stack.prefect("--no-prompt", "deploy", "--all", log="deploy")
    if done.returncode:
        typer.echo(f"warning: prefect deploy --all failed (exit {done.returncode}): see {stack.log('deploy')}")
    else:
        typer.echo("deployments: prefect.yaml deployed (prefect deployment ls)")


@infra_app.command("prefect-zombies")
def prefect_zombies(within: int = typer.Option(600, help="Seconds without a heartbeat (sent every "
                                                "PREFECT_FLOWS_HEARTBEAT_FREQUENCY s, 180 by default) before a "
                                                "running flow run is set CRASHED.")):
    """Install Prefect's zombie detection on the server at $PREFECT_API_URL (once): flow runs whose
    process or host died without a word are set CRASHED by the server itself."""
    if not os.environ.get("PREFECT_API_URL"):
        raise InfraError("PREFECT_API_URL is not set: the automation lives on a Prefect server")
    from wsss.prefect_runs import ZOMBIE_AUTOMATION, ensure_zombie_automation

    typer.echo(f"automation {ZOMBIE_AUTOMATION!r}: {ensure_zombie_automation(within)}")


def _zombies(stack: "_Stack") -> None:
    done = subprocess.run([sys.executable, "-m", "wsss.cli", "infra", "prefect-zombies"], cwd=stack.root,
                          env=stack.env, capture_output=True, text=True, timeout=120)
    typer.echo(done.stdout.strip() if done.returncode == 0 else
               f"warning: zombie detection not installed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


@infra_app.command("dev-up")
def dev_up(s3_port: int = typer.Option(9000, help="moto S3 server port."),
           mlflow_port: int = typer.Option(5000, help="MLflow server port."),
           prefect_port: int = typer.Option(4200, help="Prefect server (API + UI) port."),
           timeout: float = typer.Option(300, help="Seconds each service may take to answer.")):
    """Start the local stack on 127.0.0.1 (S3, MLflow, Prefect, a worker on pool `gpu`) in the background;
    then `source .wsss/dev/env`. Logs and pids: .wsss/dev/. Stop it with `wsss infra dev-down`."""
    root = _dvc_project()
    dev = dev_dir(root)
    pids = _read_pids(dev)
    if pids and all(_alive(e) for e in pids.values()):
        typer.echo(f"dev stack already up ({', '.join(pids)}): source {(dev / 'env').relative_to(root)}")
        return
    if any(_alive(e) for e in pids.values()):
        raise InfraError(f"dev stack half up ({_status_words(pids)}): run `wsss infra dev-down` first")
    if not (root / MLFLOW_SCRIPT).is_file():
        raise InfraError(f"{root / MLFLOW_SCRIPT}: not found (the MLflow server's launcher)")
    ports = {"s3": s3_port, "mlflow": mlflow_port, "prefect": prefect_port}
    _check_ports(ports)
    dev.mkdir(parents=True, exist_ok=True)
    endpoint = f"http://{HOST}:{s3_port}"
    env = _dev_env(root, ports, s3_env(S3Uri.parse(f"s3://{DEV_BUCKET}/{DEV_PREFIX}"), endpoint))
    for key in AWS_ELSEWHERE:  # this process's boto3 (s3_init) and the children talk to the dev S3 only
        os.environ.pop(key, None)
    os.environ.update(DEV_CREDENTIALS)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    stack = _Stack(root, {**PREFECT_DEFAULTS, **os.environ, **env, "PATH": path}, timeout)
    try:
        _start_servers(stack, ports, endpoint)
        _start_worker(stack)
    except BaseException:
        stack.stop_all()
        _dvc(root, "remote", "remove", "--local", DEV_REMOTE, check=False)
        raise
    write_env(dev / "env", env, "the dev stack of `wsss infra dev-up` (moto's fixed test credentials only)",
              unset=AWS_ELSEWHERE)
    _deploy(stack)
    _zombies(stack)
    typer.echo(f"dev stack up: source {(dev / 'env').relative_to(root)}; stop it with `wsss infra dev-down`")


@infra_app.command("dev-down")
def dev_down():
    """Stop the dev stack's processes (SIGTERM, SIGKILL after a grace) and drop its DVC remote; logs stay."""
    root = _dvc_project()
    dev = dev_dir(root)
    pids = _read_pids(dev)
    if not pids:
        typer.echo("dev stack: not running")
    for name, entry in reversed(pids.items()):
        typer.echo(f"{name}: {'stopped' if _stop(entry) else 'was not running'} (pid {entry['pid']})")
    (dev / "pids.json").unlink(missing_ok=True)
    if _dvc(root, "remote", "remove", "--local", DEV_REMOTE, check=False).returncode == 0:
        typer.echo(f"DVC remote {DEV_REMOTE}: removed from .dvc/config.local (its in-memory S3 is gone)")


def _status_words(pids: dict[str, dict]) -> str:
    return ", ".join(f"{n} {'alive' if _alive(e) else 'gone'}" for n, e in pids.items())


@infra_app.command("dev-status")
def dev_status():
    """Which of the dev stack's processes are alive, and their URLs and logs."""
    root = _dvc_project()
    pids = _read_pids(dev_dir(root))
    if not pids:
        typer.echo("dev stack: not running")
    for name, e in pids.items():
        typer.echo(f"{name:8} {'alive' if _alive(e) else 'gone':5}  pid {e['pid']:<7} {e['url'] or '-':24} {e['log']}")
