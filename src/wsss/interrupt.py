"""Stopping on SIGINT/SIGTERM: promptly, with nothing half-written and nothing left running.

`handle_signals()` turns the first SIGINT or SIGTERM into a stop request (an Event that per-image loops
poll with `check()`) and a `KeyboardInterrupt` in the main thread, which unwinds the stage: its MLflow
run ends KILLED, its Prefect API stops. Worker threads finish the image in flight, then raise
`Interrupted`; a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_stop = threading.Event()
_signal: list[int] = []


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM) while this worker was between images."""


def stop_requested() -> bool:
    return _stop.is_set()


def check() -> None:
    """Raise `Interrupted` if a stop was requested: call between units of work (images, batches)."""
    if _stop.is_set():
        raise Interrupted("interrupted")


def is_interrupt(error: BaseException) -> bool:
    """A stop rather than a failure: Ctrl-C or our SIGTERM handler (KeyboardInterrupt), Prefect's own
    `TerminationSignal` (it turns SIGTERM into that inside a flow), or a worker's `Interrupted`."""
    return isinstance(error, (KeyboardInterrupt, Interrupted)) or type(error).__name__ == "TerminationSignal"


def exit_code() -> int:
    """128 + the signal that stopped us (130 for SIGINT, 143 for SIGTERM), as a shell would report."""
    return 128 + (_signal[0] if _signal else signal.SIGINT)


def request_stop(signum: int = signal.SIGINT) -> None:
    if not _stop.is_set():
        _signal.append(signum)
    _stop.set()


def reset() -> None:
    """Forget an earlier stop request (a new run in the same process starts clean)."""
    _stop.clear()
    _signal.clear()


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Install the SIGINT/SIGTERM handlers for the duration (main thread only); restore them after."""
    reset()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, frame):
        request_stop(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_in_worker() -> None:
    """Pool-worker initializer: a terminal's Ctrl-C reaches the whole process group; let the parent decide
    (it stops handing out work and waits for the image in flight) instead of every worker dying mid-file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
