"""Prefect flow `retrain`: the weekly job of a team, strictly in sequence in one DVC workspace.

    fetch data (`dvc pull`) → ingest new drops (validate; merge + `dvc add` + `dvc push`, or quarantine)
    → `dvc exp run -n <flow run>` (the whole pipeline; `evaluate` registers the model and moves the
    `champion` alias only through the registry gate) → `dvc push` → report the gate's decision.

Never two at once: the deployment has a concurrency limit of 1 (a second trigger waits in the queue), and
the workspace is locked (a run or `wsss drops ingest` started beside it is skipped, not run). Every step is a
task in the Prefect UI; every child (dvc, its stages) streams its output into the flow's log.

Run once:    python -m flows.retrain [--drops s3://bucket/prefix] [--set train.iterations=2000]
Serve:       wsss serve   (a deployment on ops.schedule; change the schedule in the Prefect UI)
Work pool:   prefect.yaml at the project root (`prefect deploy --all`; docs/operations.md)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.states import Cancelled, Failed

from wsss.errors import WsssError
from wsss.metrics.headline import SEG_METRICS, seg_summary
from wsss.ops import commands
from wsss.ops.ingest import Outcome
from wsss.ops.lock import LOCK, workspace_lock
from wsss.settings import Settings, load_settings, project_root

DEPLOYMENT = "local"  # `wsss serve`; prefect.yaml deploys "gpu-pool" (a work pool), both the same flow


def _log(line: str) -> None:
    get_run_logger().info(line)


def _child_env() -> dict:
    """The stages `dvc` starts report to this flow's Prefect API (the UI shows them beside it)."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


@task(name="fetch data", retries=2, retry_delay_seconds=20)  # idempotent: a flaky remote gets two more tries
def fetch_data(project: Path, settings: Settings) -> str:
    if not settings.ops.pull:
        return "skipped (ops.pull false)"
    if settings.ops.git_sync:  # other nodes' dataset versions first (a diverged branch stops the run)
        commands.run(["git", "pull", "--ff-only"], project, "git pull --ff-only", log=_log)
    remote = commands.default_remote(project)
    if remote is None:
        return "no DVC remote: using the workspace's data"
    commands.dvc("pull", "--allow-missing", cwd=project, log=_log)
    return f"pulled from remote {remote}"


@task(name="ingest drops")
def ingest_drops(project: Path, settings: Settings, drops: str | None) -> list[dict]:
    from wsss.ops.drops import area_from
    from wsss.ops.ingest import ingest

    area = area_from(settings, drops)
    if area is None:
        _log("no drop area (ops.drops / $WSSS_DROPS): nothing to ingest")
        return []
    outcomes = ingest(area, settings, project, log=_log)
    if outcomes:
        report_findings(outcomes, settings)
    return [vars(o) for o in outcomes]


def report_findings(outcomes: list[Outcome], settings: Settings) -> None:
    """Every drop's findings where people look: a Prefect artifact on this flow run (the UI's Artifacts tab)
    and an MLflow run `ingest` (metrics, each drop's summary and report with its Data Docs)."""
    from prefect.artifacts import create_markdown_artifact

    from wsss.ops.ingest import findings_markdown, read_summary
    from wsss.tracking.runs import start_stage_run

    create_markdown_artifact(markdown=findings_markdown(outcomes), key="drop-findings",
                             description="Dataset drops of this run: validation findings")
    summaries = {o.drop: read_summary(o) or {} for o in outcomes}
    with start_stage_run("ingest", {"drops": ", ".join(summaries)}, experiment=settings.tracking.experiment,
                         uri=settings.tracking.uri) as run:
        run.log_metrics({
            "drops.merged": sum(o.status == "merged" for o in outcomes),
            "drops.quarantined": sum(o.status == "quarantined" for o in outcomes),
            "drops.failures": sum(len(s.get("verdicts", [])) for s in summaries.values()),
            "drops.warnings": sum(len(s.get("warnings", [])) for s in summaries.values()),
            "drops.labels_flagged": sum((s.get("label_audit") or {}).get("images_flagged", 0)
                                        for s in summaries.values())})
        for o in outcomes:
            if summaries[o.drop]:
                run.log_dict(summaries[o.drop], f"drops/{o.drop}/summary.json")
                run.log_artifact(o.report, f"drops/{o.drop}")


@task(name="experiment")
def experiment(project: Path, name: str, set_params: list[str]) -> dict:
    """`dvc exp run` of the whole pipeline, named after the flow run; returns the new metrics."""
    import json

    args = [a for p in set_params for a in ("-S", p)]
    commands.dvc("exp", "run", "-n", name, *args, cwd=project, what=f"dvc exp run {name}", log=_log, env=_child_env())
    metrics = project / SEG_METRICS
    return json.loads(metrics.read_text()) if metrics.is_file() else {}


@task(name="push", retries=2, retry_delay_seconds=20)
def push(project: Path, settings: Settings) -> str:
    if not settings.ops.push:
        return "skipped (ops.push false)"
    if commands.default_remote(project) is None:
        return "no DVC remote: nothing pushed"
    commands.dvc("push", cwd=project, log=_log)
    return "pushed"


@task(name="registry gate")
def gate_report(settings: Settings, since_ms: int) -> str:
    """What the `evaluate` stage's registry gate decided in this run (it runs inside the experiment)."""
    from wsss.seg.registry import gate_summary
    from wsss.tracking.runs import open_store

    return gate_summary(open_store(settings.tracking.uri, settings.tracking), settings.tracking.experiment,
                        settings.evaluate.registered_model, since_ms)


@flow(name="retrain", log_prints=True)
def retrain(drops: str | None = None, set_params: list[str] | None = None):
    """Pull → ingest drops → `dvc exp run` → push → registry gate, in the workspace (the worker's working_dir)."""
    from prefect.runtime import flow_run

    project = project_root()
    with workspace_lock(project) as mine:
        if not mine:
            return Cancelled(message=f"another retrain or `wsss drops ingest` holds {project / LOCK}: "
                                     "skipped, nothing ran")
        try:
            settings = load_settings()
        except WsssError as e:
            return Failed(message=str(e))
        from wsss.ops.s3 import bound_retries

        bound_retries(settings.ops.retries)  # dvc pull/push: botocore's retries, bounded
        since_ms = int(time.time() * 1000)
        name = f"{flow_run.name or 'retrain'}-{(flow_run.id or '')[:8]}".strip("-")
        step, outcomes = "tracking", []
        try:
            print(f"tracking: {sync_tracking(settings)}")  # before any work: buffered runs sent, or an outage said
            step = "fetch data"
            print(f"fetch data: {fetch_data(project, settings)}")
            step = "ingest drops"
            outcomes = ingest_drops(project, settings, drops)
            step = "experiment"
            metrics = experiment(project, name, list(set_params or []))
            print(f"experiment {name}: {seg_summary(metrics)}")
            step = "push"
            print(f"push: {push(project, settings)}")
            step = "registry gate"
            print(f"registry gate: {gate_report(settings, since_ms)}")
        except WsssError as e:
            return Failed(message="; ".join(_drop_errors(outcomes) + [f"{step}: {e}"]))
    for o in outcomes:
        print(Outcome(**o).line())
    if _drop_errors(outcomes):
        return Failed(message="; ".join(_drop_errors(outcomes)))
    return {"experiment": name, "drops": outcomes, "metrics": metrics}


def _drop_errors(outcomes: list[dict]) -> list[str]:
    """The drops that could not be processed (they wait in incoming/ for the next run), by step."""
    return [f"ingest drops: drop {o['drop']}: {o['detail']}" for o in outcomes if o["status"] == "error"]


@task(name="sync tracking")
def sync_tracking(settings: Settings) -> str:
    """The tracking server answers: send what an outage left buffered (and a pending registration).
    It does not: with `tracking.on_outage: fail` the run stops here, before any work (an MLflow outage
    must not cost a drop or an hour); with `buffer` the stages buffer their runs and the run goes on."""
    from wsss.seg.pending import sync_and_register
    from wsss.tracking.runs import TrackingUnreachable, open_store
    from wsss.tracking.store import is_server, tracking_uri

    uri = tracking_uri(settings.tracking.uri)
    try:
        open_store(uri, settings.tracking)
    except TrackingUnreachable as e:
        if settings.tracking.on_outage == "fail":
            raise
        return f"warning: {e}; the stages buffer their runs (`wsss tracking sync` later)"
    if not is_server(uri):
        return f"local store {uri}"
    return "; ".join(sync_and_register(uri, settings.tracking, log=_log))


def deployment(settings: Settings | None = None):
    """The retrain deployment `wsss serve` runs: `ops.schedule`, concurrency 1 (a second run waits)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    ops = (settings or load_settings()).ops
    return retrain.to_deployment(
        name=DEPLOYMENT, schedules=[Cron(ops.schedule, timezone=ops.timezone)], description="Pull → ingest drops → dvc exp run → push → registry gate (flows/retrain.py)",
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE))


def serve(settings: Settings | None = None) -> None:
    """Serve the retrain deployment from this process, one run at a time. Stopping leaves the schedule
    active (`pause_on_shutdown=False`); a restart applies `ops.schedule` again."""
    from prefect import serve as serve_deployments

    serve_deployments(deployment(settings), limit=1, pause_on_shutdown=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", help="drop area (s3://bucket/prefix or a folder); default ops.drops / $WSSS_DROPS")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dvc exp run -S (repeatable)")
    parser.add_argument("--serve", action="store_true", help="serve the scheduled deployment (as `wsss serve`)")
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    from wsss.prefect_env import local_api

    with local_api():  # $PREFECT_API_URL, else a loopback API of our own for this run
        state = retrain(args.drops, args.set, return_state=True)
    if not state.is_completed():
        print(f"error: retrain {state.type.value.lower()}: {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
