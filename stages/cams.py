"""DVC stage `cams`: CLIP-ES softmax-GradCAM + CAA for every image of the chosen splits.

The manifest is split into shards mapped over a Prefect task runner: threads on one machine by default,
a Dask cluster (one worker per GPU) when `cams.dask_address` is set. Outputs do not depend on the shard
count; finished images are skipped on a rerun.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from prefect import task, unmapped

from stages.common import cam_split, main, stage_flow, with_task_runner
from wsss.cam.runner import compute_shard
from wsss.cam.factory import build_cam_engine, cam_engine_config
from wsss.data.manifest import Dataset
from wsss.params import section
from wsss.shards import prepare_output_dir
from wsss.metrics.plots import example_grid, example_rows

OVERLAYS = "reports/cams/overlays.png"


@task(name="cam-shard", retries=1)
def cam_shard(ds: Dataset, cam_dir: str, params: dict, shard: int, shards: int):
    factory = functools.partial(build_cam_engine, params, ds.vocab, shard=shard)
    return compute_shard(ds, cam_dir, factory, shard, shards, progress=True)


@stage_flow("cams", ["clip", "text", "cams"])
def cams(params: dict, run) -> dict:
    """Shard the manifest, map the shards over the task runner, log throughput and overlays."""
    cfg = section(params, "cams")
    ds = cam_split(params)
    cam_dir = cfg["out"]
    kept = prepare_output_dir(cam_dir, cam_engine_config(params), set(ds.table["id"]), ".npz")
    print(f"{len(ds)} images in splits {cfg['splits']}; {kept} already done; {cfg['shards']} shard(s)")
    start = time.perf_counter()
    futures = cam_shard.map(unmapped(ds), unmapped(cam_dir), unmapped(params), range(cfg["shards"]),
                            unmapped(cfg["shards"]))
    stats = [f.result() for f in futures]
    seconds = time.perf_counter() - start
    computed = sum(s.computed for s in stats)
    metrics = {"images": len(ds), "computed": computed, "skipped": sum(s.skipped for s in stats),
               "seconds": seconds, "images_per_second": computed / seconds if computed else 0.0,
               "megapixels_per_second": sum(s.pixels for s in stats) / 1e6 / seconds if computed else 0.0}
    run.log_metrics(metrics)
    if len(ds) and cfg.get("overlays", 8):
        rows, ids = example_rows(ds, cam_dir, mask_dir=cam_dir, n=cfg.get("overlays", 8))  # no masks yet
        grid = example_grid([r[:4] for r in rows], Path(OVERLAYS), titles=("image", "ground truth", "CAM", "CAA"),
                            row_labels=ids)
        run.log_artifact(grid, "overlays")
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics


if __name__ == "__main__":
    main(cams, configure=with_task_runner("cams"))
