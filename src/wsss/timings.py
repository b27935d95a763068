"""Where a stage process spends its time: marks of named phases, written as one JSON line per process
to `$WSSS_TIMINGS` when it is set (`benchmarks/pipeline_overhead.py` reads them), with the heavy
libraries the process ended up importing. Costs nothing otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Iterator

_marks: list[tuple[str, float]] = []
HEAVY = ("torch", "torchvision", "open_clip", "great_expectations", "matplotlib", "pydensecrf", "mlflow", "prefect")


def mark(phase: str) -> None:
    """The phase `phase` ends now (wall clock, so marks from a process's start time line up)."""
    _marks.append((phase, time.time()))


def phases() -> dict[str, float]:
    """Seconds per phase: each mark minus the previous one, the first from the process's start."""
    import psutil

    out: dict[str, float] = {}
    previous = psutil.Process().create_time()
    for phase, at in _marks:
        out[phase] = round(out.get(phase, 0.0) + at - previous, 3)
        previous = at
    return out


@contextlib.contextmanager
def recorded(stage: str) -> Iterator[None]:
    """On the way out (success, failure or interrupt), append {stage, phases, total} to $WSSS_TIMINGS."""
    try:
        yield
    finally:
        target = os.environ.get("WSSS_TIMINGS")
        if target:
            mark("teardown")
            spent = phases()
            with open(target, "a") as f:
                f.write(json.dumps({"stage": stage, "phases": spent, "total": round(sum(spent.values()), 3),
                                    "imported": [m for m in HEAVY if m in sys.modules]}) + "\n")
