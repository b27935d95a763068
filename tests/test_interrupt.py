"""Stop requests: per-image loops stop between images, pools finish what is in flight and start nothing new."""

from __future__ import annotations

import os
import signal
import time

import pytest

from wsss import interrupt
from wsss.parallel import run_pool


@pytest.fixture(autouse=True)
def clean():
    interrupt.reset()
    yield
    interrupt.reset()


def _slow(x):
    time.sleep(0.2)
    return x * 2


def test_pool_stops_between_tasks_and_keeps_order():
    assert run_pool(_slow, [1, 2, 3], workers=2, desc="t", progress=False) == [2, 4, 6]
    interrupt.request_stop(signal.SIGTERM)
    with pytest.raises(interrupt.Interrupted):
        run_pool(_slow, list(range(50)), workers=2, desc="t", progress=False)
    with pytest.raises(interrupt.Interrupted):
        run_pool(_slow, [1, 2], workers=1, desc="t", progress=False)
    assert interrupt.exit_code() == 143


def test_signal_becomes_a_stop_request_and_a_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt):
        with interrupt.handle_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this at once
    assert interrupt.stop_requested() and interrupt.exit_code() == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert interrupt.is_interrupt(KeyboardInterrupt()) and interrupt.is_interrupt(interrupt.Interrupted())
    assert not interrupt.is_interrupt(ValueError()) and not interrupt.is_interrupt(SystemExit(1))
