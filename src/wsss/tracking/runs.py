"""One MLflow run per stage execution.

Runs are named `<dvc exp name or git short sha>:<stage>` and tagged with `dvc.stage`, `dvc.exp_name` and
the git commit. All stage runs of one pipeline version (same experiment name, or same commit outside
`dvc exp run`) hang under one parent run, so the MLflow UI shows a pipeline execution as one tree.
Logging goes through `MlflowClient` with an explicit run id: MLflow's fluent "active run" is per thread
and Prefect tasks run on worker threads.

A run ends FINISHED, FAILED, or KILLED (SIGINT/SIGTERM); its parent ends with it, so a pipeline version
is finished when its last stage is (and running again while a later stage runs). A process killed
outright (`kill -9`, a lost node) cannot end its run: each run records its host and process, and the next
stage started on that host marks the runs of processes that are gone as KILLED.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from wsss.errors import WsssError
from wsss.interrupt import is_interrupt
from wsss.pids import boot_id, is_running, started
from wsss.settings import project_root

PIPELINE_TAG = "wsss.pipeline"


def tracking_uri(uri: str | None = None) -> str:
    """Explicit uri > MLFLOW_TRACKING_URI > the embedded SQLite store `mlflow.db` in the project root."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{project_root() / 'mlflow.db'}"


class TrackingUnreachable(WsssError):
    """The MLflow tracking server does not answer: said in one line, instead of minutes of MLflow retries."""


def open_store(uri: str | None = None):
    """An MLflow client on the tracking store; opening a SQLite store checks its schema (seconds), once
    per process: MLflow keeps the store. A tracking server is probed first (`check_server`)."""
    uri = tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)
    return client


def check_server(uri: str, timeout: float = 3.0) -> None:
    """GET `<uri>/health` (through the same proxy settings as MLflow's client): no connection, a timeout or
    a 5xx (a proxy with nothing behind it) raises `TrackingUnreachable`. Any other answer, TLS errors
    included, means a server is there: MLflow's own client reports what else is wrong."""
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
        return
    except urllib.error.HTTPError as e:
        if e.code < 500:
            return
        reason = f"HTTP {e.code}"
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            return
        reason = str(e.reason)
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, a port that does not speak HTTP
        reason = str(e) or type(e).__name__
    raise TrackingUnreachable(f"MLflow tracking server {uri} unreachable ({reason}): start it "
                              "(bash infra/mlflow_server.sh) or unset MLFLOW_TRACKING_URI")


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"cams": {"caa": {"layers": 8}}} → {"cams.caa.layers": "8"} (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return flat


@dataclass
class StageRun:
    """An open MLflow run; safe to use from any thread."""

    client: Any
    run_id: str
    artifact_uri: str

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, step or 0) for k, v in flatten(metrics).items()
                 if _is_number(v) and not math.isnan(float(v))]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        self.client.log_dict(self.run_id, obj, name)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_image(self, image, key: str, step: int = 0) -> None:
        """A PIL image or HxWx3 uint8 array; `key`+`step` give the UI's step slider."""
        self.client.log_image(self.run_id, image, key=key, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))


def metric_name(name: str) -> str:
    """MLflow metric names allow only [A-Za-z0-9_-. /]: "ablation.+ CAA α=2" → "ablation.plus_CAA_alpha2"."""
    name = name.replace("+ ", "plus_").replace("+", "plus").replace("α=", "alpha").replace("α", "alpha")
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name).replace(" ", "_")


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return not isinstance(v, bool)
    except (TypeError, ValueError):
        return False


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _parent_run(client, experiment_id: str, key: str, git_commit: str) -> str:
    """The parent run of this pipeline version, created on first use, (re)opened while a stage runs."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    if found:
        if found[0].info.status != "RUNNING":
            client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=key,
                            tags={PIPELINE_TAG: key, "mlflow.source.git.commit": git_commit})
    return run.info.run_id


def _owner() -> dict[str, str]:
    """Host, boot, pid and the pid's start time: a pid alone can be reused once the process is gone."""
    pid = os.getpid()
    return {"wsss.host": socket.gethostname(), "wsss.boot": boot_id(), "wsss.pid": str(pid),
            "wsss.pid_started": started(pid) or ""}


def _alive(tags: Mapping[str, str]) -> bool:
    """Is the process that owns a run (same host) still running? A run from an earlier boot is not."""
    if tags.get("wsss.boot", "") != boot_id():
        return False
    try:
        return is_running(int(tags["wsss.pid"]), tags.get("wsss.pid_started"))
    except (KeyError, ValueError):
        return False


def mark_stale_runs(client, experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING stage runs of this host whose process is gone (and their parents). Runs
    started on other machines are left alone: only their own host can tell."""
    host = socket.gethostname()
    running = client.search_runs([experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                                 f"tags.`wsss.host` = '{host}'", max_results=1000)
    stale = [r for r in running if not _alive(r.data.tags)]
    for r in stale:
        client.set_tag(r.info.run_id, "wsss.ended_by", "marked KILLED at a later start: its process was gone")
        client.set_terminated(r.info.run_id, status="KILLED")
        parent = r.data.tags.get("mlflow.parentRunId")
        if parent and client.get_run(parent).info.status == "RUNNING":
            client.set_terminated(parent, status="KILLED")
    return [r.info.run_id for r in stale]


def end_status(error: BaseException | None) -> str:
    if error is None:
        return "FINISHED"
    return "KILLED" if is_interrupt(error) else "FAILED"


@contextlib.contextmanager
def start_stage_run(stage: str, params: Mapping[str, Any], *, experiment: str = "wsss",
                    uri: str | None = None) -> Iterator[StageRun]:
    """Open the MLflow run of one stage execution; FINISHED on success, KILLED on an interrupt, FAILED on
    any other exception. The parent run ends with the same status."""
    client = open_store(uri)
    exp = client.get_experiment_by_name(experiment)
    experiment_id = exp.experiment_id if exp else client.create_experiment(experiment)
    mark_stale_runs(client, experiment_id)
    commit = _git("rev-parse", "HEAD")
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    key = exp_name or ((commit[:7] or "nogit") + ("-dirty" if dirty else ""))
    parent = _parent_run(client, experiment_id, key, commit)
    run = client.create_run(experiment_id, run_name=f"{key}:{stage}", tags={
        "mlflow.parentRunId": parent, "dvc.stage": stage, "dvc.exp_name": exp_name, "git.commit": commit,
        "git.dirty": str(dirty), "mlflow.source.git.commit": commit, PIPELINE_TAG + ".member": key, **_owner(),
    })
    stage_run = StageRun(client, run.info.run_id, run.info.artifact_uri)
    stage_run.log_params(params)
    error: BaseException | None = None
    try:
        yield stage_run
    except BaseException as e:
        error = e
        raise
    finally:
        client.set_terminated(run.info.run_id, status=end_status(error))
        client.set_terminated(parent, status=end_status(error))
