"""A stage's Prefect flow run and the process that owns it.

A stage killed outright (`kill -9`, a lost node) cannot report its end: on a Prefect server that outlives
it (a team's, or `wsss repro`'s shared API) its flow run and task runs would stay RUNNING for ever. So a
stage's flow run is created with tags naming its owner (host; boot, pid and the pid's start time:
`wsss.pids`), and each stage that starts on that host first sets the RUNNING or PENDING stage runs whose
owner is gone to CRASHED, as `wsss.tracking.runs.mark_stale_runs` ends such MLflow runs KILLED. Runs of
other hosts are left alone: only their own host can tell.
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
