"""Process identity (`wsss.pids`): one rule for the MLflow run owner and the dev stack's services."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from wsss.pids import is_running, started


def test_a_running_process_keeps_its_identity():
    me = started(os.getpid())
    assert me and started(os.getpid()) == me and is_running(os.getpid(), me)
    assert not is_running(os.getpid(), me + "0")  # same pid, another start: another process


def test_a_zombie_or_a_reaped_process_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while started(child.pid) is not None and time.monotonic() < deadline:  # exited, not reaped: a zombie
        time.sleep(0.05)
    assert started(child.pid) is None
    child.wait()
    assert started(child.pid) is None and not is_running(child.pid, None)
