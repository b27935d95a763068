"""The stage pattern: DVC `cmd` → `python -m stages.<name>` → a Prefect flow → library code.

`stage_flow` turns a stage body `body(params, run)` into a Prefect flow that opens the stage's MLflow run
and turns user errors (`WsssError`) into a Failed state with a one-line message instead of a traceback.
`main` runs such a flow from the command line and exits non-zero when it fails.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.states import Failed

from wsss.errors import WsssError
from wsss.params import load_params, section
from wsss.tracking import StageRun, start_stage_run


def declared_params(stage: str, params: dict[str, Any], sections: list[str]) -> dict[str, Any]:
    """The params the stage declares in dvc.yaml (what `dvc.api.params_show` returns); outside a DVC
    project, the stage's own sections of params.yaml."""
    try:
        import dvc.api

        shown = dvc.api.params_show(stages=stage)
        if shown:
            return shown
    except Exception:  # not a DVC repo, or stage not in dvc.yaml: fall back
        pass
    return {name: params.get(name) for name in sections}


def stage_flow(stage: str, sections: list[str], **flow_kwargs) -> Callable:
    """Decorator: `body(params, run) -> result` becomes the Prefect flow of DVC stage `stage`."""

    def decorate(body: Callable[[dict, StageRun], Any]):
        def run_stage(params: dict) -> Any:
            experiment = (params.get("tracking") or {}).get("experiment", "wsss")
            uri = (params.get("tracking") or {}).get("uri")
            try:
                with start_stage_run(stage, declared_params(stage, params, sections),
                                     experiment=experiment, uri=uri) as run:
                    return body(params, run)
            except WsssError as e:
                return Failed(message=str(e))

        run_stage.__name__ = run_stage.__qualname__ = f"{stage}_stage"
        run_stage.__doc__ = body.__doc__
        return flow(name=stage, log_prints=True, validate_parameters=False, **flow_kwargs)(run_stage)

    return decorate


def main(stage_flow_fn, configure: Callable | None = None) -> None:
    """Run a stage flow with params.yaml; print a failure as one line on stderr and exit 1.

    `configure(flow, params)` may return the flow with other options (e.g. its task runner)."""
    try:
        params = load_params()
        if configure is not None:
            stage_flow_fn = configure(stage_flow_fn, params)
    except WsssError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    state = stage_flow_fn(params, return_state=True)
    if state.is_failed():
        print(f"error: {stage_flow_fn.name} failed: {state.message}", file=sys.stderr)
        raise SystemExit(1)


def cam_split(params: dict):
    """The prepared images of the splits the `cams` stage covers (and so `masks` and `evaluate_masks`)."""
    from wsss.data.manifest import Dataset, read_dataset

    ds = read_dataset(section(params, "data")["prepared"])
    keep = ds.table["split"].isin(section(params, "cams")["splits"])
    return Dataset(ds.table[keep].reset_index(drop=True), ds.vocab, ds.root, ds.name)


def with_task_runner(stage: str) -> Callable:
    """`configure` for per-image stages: shards map over threads by default, over a Dask cluster when
    `<stage>.dask_address` names a scheduler (`local` = a LocalCluster with one worker per visible GPU,
    or one per shard on CPU)."""

    def configure(stage_flow_fn, params: dict):
        cfg = section(params, stage)
        shards = max(1, int(cfg.get("shards", 1)))
        address = cfg.get("dask_address")
        if not address:
            return stage_flow_fn.with_options(task_runner=ThreadPoolTaskRunner(max_workers=shards))
        from prefect_dask import DaskTaskRunner

        if address == "local":
            import torch

            workers = torch.cuda.device_count() or shards
            return stage_flow_fn.with_options(task_runner=DaskTaskRunner(
                cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}))
        return stage_flow_fn.with_options(task_runner=DaskTaskRunner(address=address))

    return configure
