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

A tracking server that stops answering costs no work (`tracking.on_outage: buffer`, the default): MLflow
gives up within a bounded time (`wsss.tracking.outage`), the stage says so in one warning line and its run
goes on in the local buffer store (`wsss.tracking.buffer`), whole; `wsss tracking sync` sends it later
(`wsss.tracking.sync`). A server already unreachable at the start buffers the run from its first line.
With `fail`, either case is one `TrackingUnreachable` line and the stage stops (finished outputs kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from wsss.interrupt import is_interrupt
import wsss.tracking.buffer as buffer
from wsss.pids import boot_id, is_running, started
from wsss.settings import TrackingSettings, project_root
from wsss.tracking.outage import is_outage
from wsss.tracking.outage import reason as outage_reason
from wsss.tracking.store import (PIPELINE_TAG, TrackingUnreachable, check_server, is_server,  # noqa: F401
                                 open_store, quiet_mlflow, tracking_uri)

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


class StageRun:
    """An open MLflow run; safe to use from any thread.

    With `on_outage="buffer"`, a server that stops answering (`wsss.tracking.outage`) does not stop the
    stage: one warning line, then the run moves to the local buffer store (`wsss.tracking.buffer`) with
    everything logged so far (kept in a journal while the run is on the server) and the stage goes on;
    `buffered` is then True and `client`/`run_id` are the buffer's. With `"fail"` the outage is one
    `TrackingUnreachable` line."""

    def __init__(self, client, run_id: str, artifact_uri: str, *, uri: str = "", stage: str = "",
                 on_outage: str = "fail", parent_id: str | None = None, origin: dict | None = None):
        self.client, self.run_id, self.artifact_uri = client, run_id, artifact_uri
        self.uri, self.stage, self.on_outage, self.parent_id = uri, stage, on_outage, parent_id
        self.origin = origin or {}  # experiment, run name, start time, creation tags, pipeline key: to recreate it
        self.buffered = False
        self._gone = False  # the server was found gone with on_outage fail
        self.status: str | None = None  # how the run ends when the stage returns normally (None: FINISHED)
        self._journal: list[tuple[str, tuple, dict]] | None = [] if is_server(uri) else None
        self._lock = threading.RLock()

    # ---- what stages log ------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self._write("log_batch", params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_name(k), float(v), now, step or 0) for k, v in flatten(metrics).items()
                 if _is_number(v) and not math.isnan(float(v))]
        for i in range(0, len(items), 500):
            self._write("log_batch", metrics=items[i : i + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._write("log_artifacts", str(path), artifact_path)
        elif path.exists():
            self._write("log_artifact", str(path), artifact_path)

    def log_dict(self, obj: Any, name: str) -> None:
        self._write("log_dict", obj, name)

    def log_text(self, text: str, name: str) -> None:
        self._write("log_text", text, name)

    def log_image(self, image, key: str, step: int = 0) -> None:
        """A PIL image or HxWx3 uint8 array; `key`+`step` give the UI's step slider."""
        self._write("log_image", image, key=key, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._write("log_batch", tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, status: str) -> None:
        """End the run and its parent (a pipeline version ends with its last stage); not on a server
        already found gone (`fail`: the stage has said so, a second wait would only delay it)."""
        if self._gone:
            return
        self._write("set_terminated", status=status, journal=False)
        with self._lock:
            self._apply(lambda client: client.set_terminated(self.parent_id, status=status), journal=False)

    # ---- the server, the buffer -------------------------------------------------------------------------
    def require_server(self, what: str) -> None:
        """Work that only the tracking server can do (the model registry): one line when it is gone."""
        if self.buffered:
            raise TrackingUnreachable(f"{what} needs the MLflow server {self.uri}, which stopped answering")

    @contextlib.contextmanager
    def on_server(self, what: str) -> Iterator[None]:
        """Calls made straight on `client` (not through this run's methods): an outage there is one
        `TrackingUnreachable` line, and the run itself moves to the buffer (`buffer`) so that the stage's
        end is still recorded."""
        self.require_server(what)
        try:
            yield
        except Exception as e:
            if not is_server(self.uri) or not is_outage(e, self.uri):
                raise
            if self.on_outage == "buffer":
                with self._lock:
                    self._switch(e)
            raise TrackingUnreachable(f"{what} needs the MLflow server {self.uri}, which stopped answering "
                                      f"({outage_reason(e)})") from None

    def _write(self, method: str, *args, journal: bool = True, **kwargs) -> None:
        with self._lock:
            if journal and self._journal is not None:
                self._journal.append((method, args, kwargs))
            self._apply(lambda client: getattr(client, method)(self.run_id, *args, **kwargs), journal)

    def _apply(self, call, journal: bool = True) -> None:
        try:
            call(self.client)
        except Exception as e:
            if self.buffered or self._journal is None or not is_outage(e, self.uri):
                raise
            if self.on_outage != "buffer":
                self._gone = True
                raise TrackingUnreachable(f"MLflow tracking server {self.uri} stopped answering during "
                                          f"{self.stage} ({outage_reason(e)}); tracking.on_outage is fail") from None
            self._switch(e)
            if not journal:  # a journaled call was replayed by the switch
                call(self.client)

    def _switch(self, error: BaseException | None) -> None:
        """Move this run to the buffer store with everything logged so far; later calls go there."""
        if self.buffered:
            return
        import sys

        where = buffer.buffer_dir()
        cause = f" ({outage_reason(error)})" if error is not None else ""
        # straight to stderr: inside a flow `print` becomes a Prefect log line, hidden below INFO
        sys.stderr.write(f"warning: MLflow server {self.uri} does not answer{cause}: {self.stage} goes on, its run "
                         f"is kept in {where} (`wsss tracking sync` sends it once the server is back)\n")
        sys.stderr.flush()
        client = buffer.open_buffer()
        origin = self.origin
        experiment = buffer.experiment_id(client, origin["experiment"])
        parent = buffer.parent_run(client, experiment, origin["key"], self.uri, self.parent_id or "",
                                   {"mlflow.source.git.commit": origin["tags"].get("git.commit", "")})
        tags = {**origin["tags"], "mlflow.parentRunId": parent, buffer.SERVER_TAG: self.uri,
                buffer.SERVER_RUN_TAG: "" if self.run_id is None else self.run_id}
        run = client.create_run(experiment, start_time=origin["start_time"], run_name=origin["run_name"], tags=tags)
        self.client, self.run_id, self.artifact_uri, self.parent_id = client, run.info.run_id, run.info.artifact_uri, parent
        self.buffered = True
        journal, self._journal = self._journal or [], None
        for method, args, kwargs in journal:
            getattr(client, method)(self.run_id, *args, **kwargs)


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
def start_stage_run(stage: str, params: Mapping[str, Any], *, experiment: str | None = None,
                    uri: str | None = None, tracking: TrackingSettings | None = None) -> Iterator[StageRun]:
    """Open the MLflow run of one stage execution; FINISHED on success (or `run.status` when the stage
    set it), KILLED on an interrupt, FAILED on any other exception. The parent run ends with the same
    status. `tracking` (params.yaml's section) gives the experiment, the server, what an outage does and
    how long MLflow may take to notice one; `experiment`/`uri` override it."""
    tracking = tracking or TrackingSettings()
    experiment = experiment or tracking.experiment
    uri = tracking_uri(uri or tracking.uri)
    commit = _git("rev-parse", "HEAD")
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    key = exp_name or ((commit[:7] or "nogit") + ("-dirty" if dirty else ""))
    tags = {"dvc.stage": stage, "dvc.exp_name": exp_name, "git.commit": commit, "git.dirty": str(dirty),
            "mlflow.source.git.commit": commit, PIPELINE_TAG + ".member": key, **_owner()}
    origin = {"experiment": experiment, "key": key, "run_name": f"{key}:{stage}", "tags": tags,
              "start_time": int(time.time() * 1000)}
    stage_run = _open_run(stage, uri, tracking, origin, commit)
    stage_run.log_params(params)
    error: BaseException | None = None
    try:
        yield stage_run
    except BaseException as e:
        error = e
        raise
    finally:
        stage_run.end(end_status(error) if error is not None else stage_run.status or "FINISHED")


def _open_run(stage: str, uri: str, tracking: TrackingSettings, origin: dict, commit: str) -> StageRun:
    """The stage's run on the tracking store; in the buffer when the server is unreachable at start and
    `tracking.on_outage` is buffer (one warning line), else `TrackingUnreachable`."""
    try:
        client = open_store(uri, tracking)
        exp = client.get_experiment_by_name(origin["experiment"])
        experiment_id = exp.experiment_id if exp else client.create_experiment(origin["experiment"])
        mark_stale_runs(client, experiment_id)
        parent = _parent_run(client, experiment_id, origin["key"], commit)
        run = client.create_run(experiment_id, run_name=origin["run_name"], start_time=origin["start_time"],
                                tags={"mlflow.parentRunId": parent, **origin["tags"]})
    except Exception as e:
        remote = is_server(uri)
        if not remote or tracking.on_outage != "buffer" or not is_outage(e, uri):
            raise
        stage_run = StageRun(None, None, "", uri=uri, stage=stage, on_outage="buffer", origin=origin)
        stage_run._switch(e)
        return stage_run
    return StageRun(client, run.info.run_id, run.info.artifact_uri, uri=uri, stage=stage,
                    on_outage=tracking.on_outage, parent_id=parent, origin=origin)

