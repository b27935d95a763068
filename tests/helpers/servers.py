"""Real servers on 127.0.0.1 that a test stops and starts again at the same address (outages): an MLflow
tracking server (`mlflow server`, SQLite backend, proxied artifacts) and a Prefect API server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str, timeout: float = 2) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


class _Server:
    """A server process on a fixed loopback port, its store and `server.log` in `folder`: `stop()` kills
    it (SIGKILL to its session: an outage, not a shutdown), `start()` brings it back at the same URL with
    the same store. Subclasses give `name`, `health` (a URL that answers 200 once it serves), `command()`
    and `environment()`."""

    name = health = ""

    def __init__(self, folder: Path, port: int | None):
        self.folder, self.port = Path(folder), port or free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict:
        raise NotImplementedError

    def start(self, timeout: float = 120):
        self.folder.mkdir(parents=True, exist_ok=True)
        log_path = self.folder / "server.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _answers(self.health):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        deadline = time.monotonic() + 30  # the port is free again (a restart binds it)
        while _answers(self.health, timeout=0.5) and time.monotonic() < deadline:
            time.sleep(0.2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MlflowServer(_Server):
    """`mlflow server` (SQLite backend, proxied artifacts) with its store in `folder`."""

    name = "mlflow server"

    def __init__(self, folder: Path, port: int | None = None, artifacts: str | None = None, env: dict | None = None):
        super().__init__(folder, port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.health = f"{self.url}/health"
        self.artifacts, self.env = artifacts or (self.folder / "artifacts").as_uri(), env or {}

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                "--artifacts-destination", self.artifacts, "--workers", "1"]

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        return env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}


class PrefectServer(_Server):
    """`prefect server start` (API and services, no UI) with its own database under `home`."""

    name = "prefect server"

    def __init__(self, home: Path, port: int | None = None):
        super().__init__(home, port)
        self.home = self.folder
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.health = f"{self.url}/health"

    def start(self, timeout: float = 180):  # a first start creates Prefect's database
        return super().start(timeout)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
                "--no-ui", "--analytics-off", "--no-scheduler", "--no-late-runs"]

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        return env | {"PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                      "PREFECT_SERVER_UI_ENABLED": "false"}
