"""The stage pattern: DVC `cmd` → `python -m stages.<name>` → settings → Prefect flow → library code.

`main(stage)` does the steps in the order that keeps a user's work safe and a failure short:
1. read and validate all of `params.yaml` (`wsss.settings`): a typo exits 2 with one line, in about a
   second, before anything heavy is imported or any output is touched;
2. install the SIGINT/SIGTERM handlers (`wsss.interrupt`): a stop finishes the image in flight, ends
   the MLflow run KILLED and exits 130/143;
3. `has_work(settings)`: any missing/stale output? none → stop here (no Prefect, no MLflow run);
4. start the stage's Prefect API (`wsss.prefect_env.local_api`), which boots in its own process while
   this one imports Prefect, MLflow and the stage's `imports`; then run the body as a Prefect flow that
   opens one MLflow run (`wsss.tracking`) logging the stage's typed settings. The flow run is tagged with
   its process; flow runs of this host's stages killed outright are marked CRASHED first (`wsss.prefect_runs`).
User errors (`WsssError`) become a Failed state with a one-line message and exit code 1; they are never
retried. Stage modules import their heavy dependencies inside the body, so step 1 stays fast.
Outages cost no work: an MLflow server that stops answering moves the run to the local buffer
(`wsss.tracking`); a Prefect API that stops answering leaves the work going (Prefect runs the tasks
without it) and only the flow's end unreported: one warning line, the stage's real exit code, and the
flow run's record on disk for the next stage on this host to report (`wsss.prefect_runs`).
"""

from __future__ import annotations

import importlib
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable

from wsss import timings
from wsss.errors import WsssError
from wsss.interrupt import Interrupted, exit_code, handle_signals, is_interrupt, request_stop
from wsss.settings import Settings, load_settings


@dataclass(frozen=True)
class Stage:
    """A DVC stage: its name, the params sections it declares in dvc.yaml, and its body
    `body(settings, run) -> metrics`. `task_runner(settings)` may choose the flow's task runner."""

    name: str
    sections: tuple[str, ...]
    body: Callable[[Settings, Any], Any]
    task_runner: Callable[[Settings], Any] | None = None
    imports: tuple[str, ...] = ()  # the heavy modules the body needs: imported (and timed) before its work
    has_work: Callable[[Settings], bool] | None = None  # False: every output is current, nothing to do
    view: Callable[[Settings], Settings] | None = None  # the settings this stage runs with (teacher: cams on words)

    def flow(self, settings: Settings, outcome: dict | None = None):
        """The Prefect flow running the body inside the stage's MLflow run. `outcome` receives what the
        body did (`done`, or `failed` with its message) and the flow run's id: what `main` reports when the
        flow's own end cannot be (its Prefect API gone; Prefect runs the tasks without it)."""
        from prefect import flow
        from prefect.states import Failed

        from wsss.tracking import start_stage_run

        outcome = {} if outcome is None else outcome

        def run_stage(settings: Settings) -> Any:
            try:
                timings.mark("flow_start")
                _remember_flow_run(outcome)
                with start_stage_run(self.name, settings.sections(self.sections), tracking=settings.tracking) as run:
                    timings.mark("mlflow_start")
                    try:
                        result = self.body(settings, run)
                        outcome["done"] = True
                        return result
                    finally:
                        timings.mark("work")
            except WsssError as e:
                outcome["failed"] = str(e)
                return Failed(message=str(e))
            except BaseException as e:  # Prefect turns SIGTERM into its own TerminationSignal: stop the workers too
                if is_interrupt(e):
                    request_stop(getattr(e, "signal", signal.SIGINT))
                raise

        run_stage.__name__ = run_stage.__qualname__ = f"{self.name}_stage"
        run_stage.__doc__ = self.body.__doc__
        stage_flow = flow(name=self.name, log_prints=True, validate_parameters=False)(run_stage)
        if self.task_runner is not None:
            stage_flow = stage_flow.with_options(task_runner=self.task_runner(settings))
        return stage_flow


def _api_url() -> str:
    import os

    return os.environ.get("PREFECT_API_URL", "")


def _prefect_api_lost() -> bool:
    """Does the stage's Prefect API no longer answer (`/health`, 3 s)?"""
    from wsss.prefect_env import api_answers

    return bool(_api_url()) and not api_answers(_api_url())


def _remember_flow_run(outcome: dict) -> None:
    """Record this flow run on disk when its API outlives the stage (`wsss.prefect_runs.remember`)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    outcome["flow_run"] = str(context.flow_run.id)
    if _EXTERNAL_API.get("url"):
        from wsss.prefect_runs import remember

        remember(outcome["flow_run"], _EXTERNAL_API["url"])


_EXTERNAL_API: dict[str, str] = {}  # {"url": ...} while the stage's Prefect API is a server that outlives it


def stage(name: str, sections: list[str], task_runner: Callable | None = None, imports: tuple[str, ...] = (),
          has_work: Callable | None = None) -> Callable[[Callable], Stage]:
    """Decorator: a stage body becomes the `Stage` of DVC stage `name`."""
    return lambda body: Stage(name, tuple(sections), body, task_runner, tuple(imports), has_work)


def no_retry_on_user_error(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry transient failures only; a user error or a stop never changes
    on a second try."""
    try:
        state.result()
    except (WsssError, Interrupted):
        return False
    except Exception:
        return True
    return True


def main(stage: Stage) -> None:
    """Run a stage from the command line; exit 0, 1 (the stage failed), 2 (bad settings) or 130/143."""
    timings.mark("main")
    try:
        settings = load_settings()
        if stage.view is not None:
            settings = stage.view(settings)
    except WsssError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    timings.mark("settings")
    outcome: dict = {}
    try:
        with timings.recorded(stage.name), handle_signals():
            if stage.has_work is not None and not stage.has_work(settings):
                _settle_orphans(stage)
                print(f"{stage.name}: nothing to do, every output is current")
                return
            timings.mark("pending")
            from wsss.prefect_env import local_api, wait_until_ready

            with local_api(wait=False) as api:  # the API boots in its own process while this one imports
                preload(stage, settings)
                timings.mark("imports")
                wait_until_ready(*api)
                timings.mark("prefect_api")
                if api[1] is None:
                    _EXTERNAL_API["url"] = api[0]
                state = run_flow(stage, settings, outcome)
                timings.mark("flow_end")
    except WsssError as e:  # found before the flow (e.g. by `has_work`): one line, like any user error
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except BaseException as e:
        if not is_interrupt(e):
            raise
        request_stop(getattr(e, "signal", signal.SIGINT))
        print(f"interrupted: {stage.name} stopped; finished outputs are kept, a rerun resumes", file=sys.stderr)
        _exit(exit_code(), outcome)
    if state is None:  # the work is done (or failed) but its Prefect API is gone: say which, exit at once
        print(f"warning: the Prefect API {_api_url()} stopped answering during {stage.name}, which went on without "
              "it; its flow run is ended by the next stage once the API answers", file=sys.stderr)
        if outcome.get("done"):
            _exit(0, outcome)
        print(f"error: {stage.name} failed: {outcome.get('failed', 'see the log above')}", file=sys.stderr)
        _exit(1, outcome)
    if state.is_failed() or state.is_crashed():
        print(f"error: {stage.name} failed: {state.message}", file=sys.stderr)
        raise SystemExit(1)


def _settle_orphans(stage: Stage) -> None:
    """End the recorded flow runs of this host's stages killed outright (`wsss.prefect_runs`): a
    directory listing when there are none, so a stage with nothing to do stays quick."""
    from wsss.prefect_runs import settle_recorded_runs

    for run_id, state in settle_recorded_runs():
        why = "its stage process was gone" if state == "CRASHED" else "its stage had finished without the API"
        print(f"{stage.name}: flow run {run_id} marked {state} ({why})", file=sys.stderr)


def _exit(code: int, outcome: dict) -> None:
    """Exit with `code`; once the Prefect API is lost, without waiting for Prefect's log and event workers
    (at exit they retry the dead server for minutes): our own outputs and MLflow run are complete."""
    if not outcome.get("api_lost"):
        raise SystemExit(code)
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


LOST_API_MESSAGE = "the Prefect API stopped answering during the stage, which finished without it"


def run_flow(stage: Stage, settings: Settings, outcome: dict | None = None):
    """The stage's flow run (its final state), tagged with this process as its owner, after the unfinished
    flow runs of this host's stage processes that are gone are ended (`wsss.prefect_runs`). None when the
    flow's end could not be reported because its Prefect API stopped answering (`outcome` says what the
    body did; the flow run's record keeps it for the next stage to report)."""
    from prefect import tags

    from wsss.prefect_runs import forget, mark_crashed_runs, outcome as record_outcome, owner_tags

    outcome = {} if outcome is None else outcome
    _settle_orphans(stage)
    for run_id in mark_crashed_runs():
        print(f"{stage.name}: flow run {run_id} marked CRASHED (its stage process was gone)", file=sys.stderr)
    try:
        with tags(*owner_tags()):
            state = stage.flow(settings, outcome)(settings, return_state=True)
    except Exception:
        if not outcome or not _prefect_api_lost():
            raise
        outcome["api_lost"] = True
        if outcome.get("flow_run"):
            done = outcome.get("done")
            record_outcome(outcome["flow_run"], "COMPLETED" if done else "FAILED",
                           LOST_API_MESSAGE + ("" if done else f": {outcome.get('failed', 'it failed')}"))
        return None
    if outcome.get("flow_run"):
        forget(outcome["flow_run"])  # its end is reported
    return state


def run_worker(work: Callable[[Settings], Any]) -> None:
    """A helper process of a stage (a non-zero `torchrun` rank): the same settings check and signal
    handling as `main`, then `work(settings)` without a Prefect flow or MLflow run of its own."""
    try:
        settings = load_settings()
    except WsssError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    try:
        with handle_signals():
            work(settings)
    except WsssError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except BaseException as e:
        if not is_interrupt(e):
            raise
        raise SystemExit(exit_code())


def preload(stage: Stage, settings: Settings) -> None:
    """Import Prefect, MLflow (and open its store) and the stage's heavy modules."""
    import prefect  # noqa: F401

    from wsss.tracking.runs import TrackingUnreachable, open_store

    try:
        open_store(settings.tracking.uri, settings.tracking)
    except TrackingUnreachable:
        if settings.tracking.on_outage == "fail":
            raise
        # buffer: the stage's run starts in the local buffer (wsss.tracking), with one warning line
    for module in stage.imports:
        importlib.import_module(module)


def shard_runner(section: str) -> Callable[[Settings], Any]:
    """`task_runner` for per-image stages: shards map over threads by default, over a Dask cluster when
    `<section>.dask_address` names a scheduler (`local` = a LocalCluster with one worker per visible GPU,
    or one per shard on CPU)."""

    def choose(settings: Settings):
        cfg = getattr(settings, section)
        if not cfg.dask_address:
            from prefect.task_runners import ThreadPoolTaskRunner

            return ThreadPoolTaskRunner(max_workers=cfg.shards)
        from prefect_dask import DaskTaskRunner

        if cfg.dask_address == "local":
            import dask
            import torch

            dask.config.set({"distributed.worker.daemon": False})  # a shard may start a process pool (masks.workers)
            workers = torch.cuda.device_count() or cfg.shards
            return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
        return DaskTaskRunner(address=cfg.dask_address)

    return choose
