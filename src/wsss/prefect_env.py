"""Prefect's settings and API for a stage process.

Prefect reads its settings from the environment once, when it is imported: `apply_prefect_defaults`
sets ours first (no analytics; 180 s for a first start, which creates Prefect's database and took over
Prefect's own 20 s limit on a 2-core VM). `local_api` gives a stage a Prefect API when none is configured:
a loopback server process of our own instead of Prefect's temporary one, because ours lives in its own
session (a terminal's Ctrl-C does not kill it under the flow that is still reporting to it), is stopped
when the stage ends, and dies with the stage even after `kill -9` (Linux parent-death signal).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Iterator

from wsss.errors import WsssError

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def apply_prefect_defaults() -> None:
    """Set the defaults the environment does not set; call before the first `import prefect`."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except (OSError, AttributeError):  # not Linux
        return None


_LIBC = _load_libc()  # loaded here, never in a forked child (no locks taken between fork and exec)


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A preexec_fn: the child gets `sig` when the process that started it dies (Linux PR_SET_PDEATHSIG;
    elsewhere a no-op), so no child outlives a killed parent."""
    def set_parent_death_signal() -> None:
        if _LIBC is not None:
            _LIBC.prctl(1, sig)

    return set_parent_death_signal


def launch_api_server(port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start a Prefect API (no UI) on 127.0.0.1 without waiting for it; returns (process, api url). It
    boots in its own process while the caller imports what it needs (`wait_until_ready` after)."""
    apply_prefect_defaults()
    port = port or _free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
        env=env, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent())
    return proc, f"http://127.0.0.1:{port}/api"


def wait_until_ready(url: str, proc: subprocess.Popen | None = None) -> None:
    """Poll `<url>/health` until the API answers (up to PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)."""
    import httpx

    limit = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise WsssError(f"the local Prefect API exited with code {proc.returncode} while starting")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise WsssError(f"the Prefect API at {url} did not answer within {limit:.0f} s "
                    "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")


def api_answers(url: str, timeout: float = 3.0) -> bool:
    """Does the Prefect API at `url` answer `/health` now?"""
    import httpx

    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process's group, SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def drain_prefect_workers(timeout: float = 10.0) -> None:
    """Send the logs and events Prefect still holds while its API is up (else they are retried against
    a stopped server at exit: a minute of connection errors)."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout)


@contextlib.contextmanager
def local_api(wait: bool = True) -> Iterator[tuple[str, subprocess.Popen | None]]:
    """The Prefect API a stage talks to, as (url, its process or None): $PREFECT_API_URL when set (a
    server you run, or the one `wsss repro` shares across stages), else a loopback server started here
    and stopped on the way out. Sets PREFECT_API_URL for the duration; call before the first `import
    prefect` in this process. With `wait=False` it returns at once: `wait_until_ready(url, process)`
    before the first flow runs."""
    if os.environ.get("PREFECT_API_URL"):
        if wait:
            wait_until_ready(os.environ["PREFECT_API_URL"])
        yield os.environ["PREFECT_API_URL"], None
        return
    proc, url = launch_api_server()
    os.environ["PREFECT_API_URL"] = url
    try:
        if wait:
            wait_until_ready(url, proc)
        yield url, proc
    finally:
        drain_prefect_workers()
        os.environ.pop("PREFECT_API_URL", None)
        stop_process(proc)
