"""One DVC workspace, one writer: the retrain flow and `wsss drops ingest` hold this lock, so two never
run `dvc add`/`dvc exp run` in one workspace at once (DVC's own lock would fail one of them mid-way)."""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator

LOCK = Path(".wsss/workspace.lock")


@contextlib.contextmanager
def workspace_lock(project: Path) -> Iterator[bool]:
    """Hold the workspace lock; yields False at once (never waits) when another process holds it.
    The kernel drops it with its process, so a killed run never leaves it stale."""
    path = project / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
