"""System metrics (CPU, memory, disk, network, GPU) of a long stage, through its `StageRun`.

MLflow's `SystemMetricsMonitor` logs with a client of its own on the run id it was given: when the server
stops answering it gives up (and its metrics do not follow the run into the buffer). This thread samples
with MLflow's own monitors and logs through the stage's run instead, so the metrics follow the run
wherever it is kept (`wsss.tracking.runs.StageRun`)."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

_logger = logging.getLogger(__name__)


def _monitors() -> list:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        monitors.append(GPUMonitor())  # NVIDIA only (pynvml); none on a CPU machine
    except Exception:
        pass
    return monitors


@contextlib.contextmanager
def system_metrics(run, interval: float = 5.0) -> Iterator[None]:
    """Log `system/...` metrics to `run` every `interval` seconds (steps 0, 1, ...) while the block runs."""
    monitors = _monitors()
    stop = threading.Event()

    def sample() -> None:
        step = 0
        while not stop.wait(interval):
            metrics = {}
            for m in monitors:
                m.collect_metrics()
                metrics.update(m.aggregate_metrics())
                m.clear_metrics()
            try:
                run.log_metrics({f"system/{k}": v for k, v in metrics.items()}, step=step)
            except Exception as e:  # the run's own failure: the stage reports it, the sampler just stops
                _logger.warning("system metrics stopped: %s", e)
                return
            step += 1

    thread = threading.Thread(target=sample, name="wsss-system-metrics", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 30)
