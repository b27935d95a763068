"""A stage's Prefect flow run and the process that owns it.

A stage killed outright (`kill -9`, a lost node) cannot report its end: on a Prefect server that outlives
it (a team's, or `wsss repro`'s shared API) its flow run and task runs would stay RUNNING for ever. So a
stage's flow run is created with tags naming its owner (host; boot, pid and the pid's start time:
`wsss.pids`), and each stage that starts on that host first sets the RUNNING or PENDING stage runs whose
owner is gone to CRASHED, as `wsss.tracking.runs.mark_stale_runs` ends such MLflow runs KILLED. Runs of
other hosts are left alone: only their own host can tell. A stage with nothing to do never talks to
Prefect, so each flow run is also recorded on disk (`remember`) and settled from there by any later stage
(`settle_recorded_runs`); a host that never comes back is Prefect's own zombie detection's
(`ensure_zombie_automation`: heartbeats missing → CRASHED, on the server).
"""

from __future__ import annotations

import os
import socket

from wsss.pids import boot_id, is_running, started

STAGE_TAG = "wsss-stage"
HOST_TAG = "wsss-host:"  # + host name
OWNER_TAG = "wsss-owner:"  # + boot id/pid/pid start time
MESSAGE = "its stage process was gone (killed outright); marked by a later stage on its host"


def owner_tags() -> list[str]:
    """The tags of a flow run owned by this process."""
    pid = os.getpid()
    return [STAGE_TAG, f"{HOST_TAG}{socket.gethostname()}", f"{OWNER_TAG}{boot_id()}/{pid}/{started(pid) or ''}"]


def owner_alive(tags: list[str]) -> bool:
    """Is the process named by a flow run's owner tag (recorded on this host) still running? A run from
    an earlier boot is not; a run without an owner tag cannot be told, so it counts as alive."""
    owner = next((t[len(OWNER_TAG):] for t in tags if t.startswith(OWNER_TAG)), None)
    if owner is None:
        return True
    boot, pid, start = (owner.split("/", 2) + ["", ""])[:3]
    return boot == boot_id() and pid.isdigit() and is_running(int(pid), start or None)


def mark_crashed_runs() -> list[str]:
    """Set to CRASHED this host's unfinished stage flow runs whose process is gone, and their unfinished
    task runs; returns the flow run ids (through $PREFECT_API_URL, the stage's API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters as f
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = [StateType.RUNNING, StateType.PENDING]
    mine = f.FlowRunFilter(tags=f.FlowRunFilterTags(all_=[STAGE_TAG, f"{HOST_TAG}{socket.gethostname()}"]),
                           state=f.FlowRunFilterState(type=f.FlowRunFilterStateType(any_=unfinished)))
    with get_client(sync_client=True) as client:
        gone = [run for run in client.read_flow_runs(flow_run_filter=mine) if not owner_alive(run.tags)]
        for run in gone:
            client.set_flow_run_state(run.id, Crashed(message=MESSAGE), force=True)
            tasks = f.TaskRunFilter(flow_run_id=f.TaskRunFilterFlowRunId(any_=[run.id]),
                                    state=f.TaskRunFilterState(type=f.TaskRunFilterStateType(any_=unfinished)))
            for task in client.read_task_runs(task_run_filter=tasks):
                client.set_task_run_state(task.id, Crashed(message=MESSAGE), force=True)
    return [str(run.id) for run in gone]


# ---- flow runs this host owns, recorded on disk ---------------------------------------------------------
# A stage with nothing to do stops before it imports Prefect or talks to any API (it takes a second). So
# that such a rerun still settles the flow run of a stage killed before it, every stage on a Prefect API
# that outlives it writes `.wsss/prefect/<flow run id>.json` when its flow starts and removes it when the
# flow run's end is reported. A record left behind is settled by the next stage on this host, with or
# without work (`settle_recorded_runs`): plain HTTP, no Prefect import. A stage that lost its API mid-run
# (it finished without it) leaves its record with its real outcome, set once the API answers again.
RECORDS = ".wsss/prefect"


def _records_dir():
    from wsss.settings import project_root

    return project_root() / RECORDS


def remember(flow_run_id: str, api_url: str) -> None:
    """Record this process's flow run on `api_url` (a server that outlives it)."""
    from wsss.io import write_json

    pid = os.getpid()
    write_json(_records_dir() / f"{flow_run_id}.json", {
        "flow_run": flow_run_id, "api": api_url, "host": socket.gethostname(), "boot": boot_id(), "pid": pid,
        "pid_started": started(pid) or "", "outcome": None, "message": None})


def outcome(flow_run_id: str, state_type: str, message: str) -> None:
    """The flow run's real end, for the stage that reports it once its API is back."""
    import json

    from wsss.io import write_json

    path = _records_dir() / f"{flow_run_id}.json"
    if path.is_file():
        record = json.loads(path.read_text())
        write_json(path, {**record, "outcome": state_type, "message": message})


def forget(flow_run_id: str) -> None:
    (_records_dir() / f"{flow_run_id}.json").unlink(missing_ok=True)


def settle_recorded_runs(timeout: float = 3.0) -> list[tuple[str, str]]:
    """End the recorded flow runs whose process is gone: with their recorded outcome (a stage that lost
    its API), else CRASHED with their unfinished task runs; a run already ended (the kill came after its
    end was reported) is left as it is. Records whose API does not answer stay for a later stage. Returns
    (flow run id, the state it was set to). Costs a directory listing when there is nothing to settle."""
    import json

    folder = _records_dir()
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    settled = []
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if record.get("host") != socket.gethostname():
            continue
        if record.get("boot") == boot_id() and is_running(int(record["pid"]), record.get("pid_started") or None):
            continue
        try:
            if _settle(record, timeout):
                settled.append((record["flow_run"], record.get("outcome") or "CRASHED"))
        except OSError:
            continue  # its API does not answer now: a later stage tries again
        path.unlink(missing_ok=True)
    return settled


def _settle(record: dict, timeout: float) -> bool:
    """Set the recorded run's end through the REST API; False when it had ended already (or is gone)."""
    import httpx

    api, run_id = record["api"].rstrip("/"), record["flow_run"]
    try:
        with httpx.Client(timeout=timeout) as http:
            found = http.get(f"{api}/flow_runs/{run_id}")
            if found.status_code == 404:
                return False
            found.raise_for_status()
            if (found.json().get("state") or {}).get("type") not in ("RUNNING", "PENDING", "SCHEDULED", "PAUSED"):
                return False
            kind = record.get("outcome") or "CRASHED"
            message = record.get("message") or MESSAGE
            state = {"type": kind, "name": kind.title(), "message": message}
            http.post(f"{api}/flow_runs/{run_id}/set_state", json={"state": state, "force": True}).raise_for_status()
            if kind != "COMPLETED":
                tasks = http.post(f"{api}/task_runs/filter", json={
                    "flow_runs": {"id": {"any_": [run_id]}},
                    "task_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING"]}}}})
                tasks.raise_for_status()
                for task in tasks.json():
                    http.post(f"{api}/task_runs/{task['id']}/set_state", json={
                        "state": {"type": "CRASHED", "name": "Crashed", "message": message}, "force": True})
    except httpx.HTTPError as e:
        raise OSError(str(e)) from None
    return True


# ---- a lost host: Prefect's own zombie detection ----------------------------------------------------------
ZOMBIE_AUTOMATION = "wsss: crash flow runs whose heartbeats stopped"


def ensure_zombie_automation(within_seconds: int = 600) -> str:
    """Create (once, by name) Prefect's zombie detection on the API: a flow run that sent a heartbeat
    (`PREFECT_FLOWS_HEARTBEAT_FREQUENCY`, 180 s by default) and then neither another one nor a final
    state within `within_seconds` is set CRASHED by the server. That covers what no later stage on the
    same host can: a host that never comes back. Returns "created" or "present"."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=ZOMBIE_AUTOMATION)
        return "present"
    except ValueError:
        pass
    Automation(
        name=ZOMBIE_AUTOMATION,
        description="Prefect's zombie detection (docs: detect zombie flows), installed by wsss",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=within_seconds)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="no heartbeat: its process or host was lost (wsss zombie detection)")],
    ).create()
    return "created"
