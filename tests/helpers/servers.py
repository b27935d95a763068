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


class MlflowServer:
    """`mlflow server` with its store in `folder`, on a fixed port: `stop()` kills it (SIGKILL: an outage,
    not a shutdown), `start()` brings it back at the same URL with the same store."""

    def __init__(self, folder: Path, port: int | None = None, artifacts: str | None = None, env: dict | None = None):
        self.folder, self.port = Path(folder), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts, self.env = artifacts or (self.folder / "artifacts").as_uri(), env or {}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "MlflowServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env |= {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env}
        log = open(self.folder / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", self.artifacts, "--workers", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _answers(f"{self.url}/health"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        deadline = time.monotonic() + 30  # the port is free again (a restart binds it)
        while _answers(f"{self.url}/health", timeout=0.5) and time.monotonic() < deadline:
            time.sleep(0.2)

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class PrefectServer:
    """`prefect server start` (API and services, no UI) with its own database under `home`, on a fixed
    port: `stop()` kills it (SIGKILL), `start()` brings it back at the same URL with the same database."""

    def __init__(self, home: Path, port: int | None = None):
        self.home, self.port = Path(home), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_HOME": str(self.home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_ENABLED": "false"}
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
             "--no-ui", "--analytics-off", "--no-scheduler", "--no-late-runs"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _answers(f"{self.url}/health"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start: {(self.home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        deadline = time.monotonic() + 30
        while _answers(f"{self.url}/health", timeout=0.5) and time.monotonic() < deadline:
            time.sleep(0.2)

    def __enter__(self) -> "PrefectServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
