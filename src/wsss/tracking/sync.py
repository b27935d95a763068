"""`wsss tracking sync`: send the buffered runs (`wsss.tracking.buffer`) to their tracking server.

Each finished buffered stage run becomes the run it would have been: its twin on the server when the
server had created it before the outage (completed there), else a new run with the buffered run's start
time, under the server's parent run of its pipeline version; then params, every metric's history (steps
and timestamps), tags, artifacts, and the end status and time. Safe to repeat and to interrupt: every
step writes the same values again (MLflow keeps one copy of a metric point logged twice), a run created
by an earlier, interrupted sync is found by its `BUFFERED_TAG`, and a run is marked synced in the buffer
(`SYNCED_TAG`) only once all of it is on the server, so a second sync sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from wsss.errors import WsssError
import wsss.tracking.buffer as buffer
from wsss.tracking.buffer import BUFFERED_TAG, INTERNAL, SERVER_RUN_TAG, SERVER_TAG, SYNCED_TAG
from wsss.tracking.runs import mark_stale_runs
from wsss.tracking.store import PIPELINE_TAG, is_server, open_store, tracking_uri

# tags a server run may hold that the buffered run cannot have: set on the server while the stage was
# buffering (its twin marked KILLED by a later stage, since its process was gone)
_SERVER_ONLY = ("wsss.ended_by",)


@dataclass
class SyncReport:
    synced: dict[str, str] = field(default_factory=dict)  # buffered run id → server run id
    running: list[str] = field(default_factory=list)  # still running (a stage buffering now): left for later
    other_servers: dict[str, int] = field(default_factory=dict)  # runs buffered for other servers: uri → count

    def lines(self) -> list[str]:
        out = [] if self.synced else ["nothing to sync: every buffered run is on its server"]
        out += [f"{n} run(s) still running, synced once they end" for n in [len(self.running)] if n]
        out += [f"{n} run(s) buffered for {uri} (sync with MLFLOW_TRACKING_URI={uri})"
                for uri, n in sorted(self.other_servers.items())]
        return out


def sync(uri: str | None = None, root: Path | None = None, log: Callable[[str], None] = print,
         tracking=None) -> SyncReport:
    """Send every finished run buffered for `uri` (default: the tracking URI) to it; `TrackingUnreachable`
    when it still does not answer."""
    uri = tracking_uri(uri)
    report = SyncReport()
    if not is_server(uri):
        raise WsssError(f"{uri}: not a tracking server (runs are buffered only for http(s) servers)")
    if not buffer.exists(root):
        return report
    server = open_store(uri, tracking)
    local = buffer.open_buffer(root)
    for exp in local.search_experiments():
        mark_stale_runs(local, exp.experiment_id)  # a buffering stage killed outright: KILLED, as on a server
        runs = _all_runs(local, exp.experiment_id)
        for run in runs:
            target = run.data.tags.get(SERVER_TAG)
            if target and target != uri and SYNCED_TAG not in run.data.tags:
                report.other_servers[target] = report.other_servers.get(target, 0) + 1
        mine = [r for r in runs if r.data.tags.get(SERVER_TAG) == uri]
        parents = {r.info.run_id: r for r in mine if PIPELINE_TAG in r.data.tags}
        stages = [r for r in mine if PIPELINE_TAG not in r.data.tags and SYNCED_TAG not in r.data.tags]
        if not stages:
            continue
        server_exp = _server_experiment(server, exp.name)
        touched: dict[str, str] = {}  # server parent id → the buffered parent it stands for
        for run in sorted(stages, key=lambda r: r.info.start_time):
            if run.info.status == "RUNNING":
                report.running.append(run.info.run_id)
                continue
            parent = parents.get(run.data.tags.get("mlflow.parentRunId", ""))
            server_parent = _server_parent(server, server_exp, parent) if parent else ""
            server_id = _send_run(server, local, server_exp, run, server_parent)
            report.synced[run.info.run_id] = server_id
            if server_parent:
                touched[server_parent] = parent.info.run_id
            log(f"synced {run.info.run_name} ({run.info.status}) → run {server_id} on {uri}")
        for server_parent, parent_id in touched.items():
            _end_parent(server, local, server_parent, parent_id)
    return report


def server_run(report: SyncReport, buffered_run: str) -> str | None:
    return report.synced.get(buffered_run)


def _all_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _server_experiment(server, name: str) -> str:
    exp = server.get_experiment_by_name(name)
    return exp.experiment_id if exp else server.create_experiment(name)


def _server_parent(server, experiment_id: str, parent) -> str:
    """The server's parent run for a buffered parent: its twin, else the server's run of that pipeline
    version (found by its tag), else a new one with the buffered parent's start time."""
    from mlflow.exceptions import MlflowException

    twin = parent.data.tags.get(SERVER_RUN_TAG)
    if twin:
        try:
            server.get_run(twin)
            return twin
        except MlflowException:
            pass
    key = parent.data.tags[PIPELINE_TAG]
    found = server.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    if found:
        return found[0].info.run_id
    tags = {k: v for k, v in parent.data.tags.items() if k not in INTERNAL and not k.startswith("mlflow.")}
    tags["mlflow.source.git.commit"] = parent.data.tags.get("mlflow.source.git.commit", "")
    run = server.create_run(experiment_id, start_time=parent.info.start_time, run_name=parent.info.run_name,
                            tags={**tags, BUFFERED_TAG: parent.info.run_id})
    return run.info.run_id


def _send_run(server, local, experiment_id: str, run, server_parent: str) -> str:
    """One buffered stage run onto the server (idempotent); returns the server's run id."""
    from mlflow.entities import Param, RunTag
    from mlflow.exceptions import MlflowException

    local_id = run.info.run_id
    server_id = run.data.tags.get(SERVER_RUN_TAG) or ""
    if server_id:
        try:
            server.get_run(server_id)
        except MlflowException:
            server_id = ""
    if not server_id:  # created by an earlier sync that was cut short?
        found = server.search_runs([experiment_id], filter_string=f"tags.`{BUFFERED_TAG}` = '{local_id}'",
                                   max_results=1)
        server_id = found[0].info.run_id if found else ""
    if not server_id:
        server_id = server.create_run(experiment_id, start_time=run.info.start_time, run_name=run.info.run_name,
                                      tags={BUFFERED_TAG: local_id, "mlflow.parentRunId": server_parent}).info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    for i in range(0, len(params), 100):
        server.log_batch(server_id, params=params[i:i + 100])
    for key in run.data.metrics:
        history = local.get_metric_history(local_id, key)
        for i in range(0, len(history), 1000):
            server.log_batch(server_id, metrics=history[i:i + 1000])
    tags = {k: v for k, v in run.data.tags.items() if k not in INTERNAL and k != "mlflow.parentRunId"}
    tags[BUFFERED_TAG] = local_id
    items = [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, len(items), 100):
        server.log_batch(server_id, tags=items[i:i + 100])
    there = server.get_run(server_id).data.tags
    for key in _SERVER_ONLY:
        if key in there and key not in run.data.tags:
            server.delete_tag(server_id, key)
    artifacts = _local_path(run.info.artifact_uri)
    if artifacts.is_dir() and any(artifacts.iterdir()):
        server.log_artifacts(server_id, str(artifacts))
    server.set_terminated(server_id, status=run.info.status, end_time=run.info.end_time)
    local.set_tag(local_id, SYNCED_TAG, server_id)  # last: a sync cut short sends this run again
    return server_id


def _end_parent(server, local, server_parent: str, parent_id: str) -> None:
    """The server's parent ends as its latest stage run did (as it would have without the outage),
    unless a stage of it is running there now."""
    parent = server.get_run(server_parent)
    children = server.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{server_parent}'",
                                  order_by=["attributes.start_time DESC"], max_results=1000)
    if children and not any(c.info.status == "RUNNING" for c in children):
        last = max(children, key=lambda c: c.info.end_time or 0)
        server.set_terminated(server_parent, status=last.info.status, end_time=last.info.end_time)
    if not any(r.data.tags.get("mlflow.parentRunId") == parent_id and SYNCED_TAG not in r.data.tags
               for r in _all_runs(local, local.get_run(parent_id).info.experiment_id)):
        local.set_tag(parent_id, SYNCED_TAG, server_parent)


def _local_path(uri: str) -> Path:
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)
