"""Per-image work in a process pool, with a progress bar, first-error stop and prompt interrupts."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable

from wsss import interrupt
from wsss.progress import WarmProgress


def run_pool(fn: Callable, tasks: list, *, workers: int | None, desc: str, progress: bool,
             start_method: str = "spawn") -> list:
    """fn over tasks with a tqdm bar, results in task order; workers ≤ 1 runs in this process.

    Spawned (not forked) workers: safe even when the caller has threads or torch loaded. On the first
    failure the remaining tasks are cancelled and the error is re-raised. On a stop request
    (`wsss.interrupt`) no new task starts: the ones in flight finish (their outputs are atomic) and
    `Interrupted` is raised; workers ignore the terminal's Ctrl-C and leave that decision to this process.
    """
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    results = [None] * len(tasks)
    with WarmProgress(len(tasks), desc, disable=not progress) as bar:
        if workers == 1:
            for i, task in enumerate(tasks):
                interrupt.check()
                results[i] = fn(task)
                bar.update()
            return results
        ctx = multiprocessing.get_context(start_method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=interrupt.ignore_in_worker) as pool:
            queue = iter(enumerate(tasks))
            pending = {}
            try:
                while True:
                    while len(pending) < 2 * workers and not interrupt.stop_requested():
                        nxt = next(queue, None)
                        if nxt is None:
                            break
                        pending[pool.submit(fn, nxt[1])] = nxt[0]
                    if not pending:
                        break
                    done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in done:
                        results[pending.pop(fut)] = fut.result()
                        bar.update()
                interrupt.check()
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    return results
