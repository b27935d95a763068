"""DVC stage `masks`: CAMs → (1 − max)^α background → dense CRF → confidence → VOC-palette PNGs.

Images run in a process pool on every core; shards map over the same task runner as `cams`. Masks made
with other settings, or from CAMs that have since been recomputed, are redone; the rest are skipped.
"""

from __future__ import annotations

from prefect import task, unmapped

from stages.common import cam_split, main, stage_flow, with_task_runner
from wsss.data.manifest import Dataset
from wsss.masks.export import MaskParams, export_masks
from wsss.params import section
from wsss.shards import drop_stale, output_key, prepare_output_dir

SCHEDULING_KEYS = {"out", "workers", "shards", "dask_address"}


def mask_params(params: dict) -> MaskParams:
    return MaskParams.from_dict({k: v for k, v in section(params, "masks").items() if k not in SCHEDULING_KEYS})


@task(name="mask-shard", retries=1)
def mask_shard(ds: Dataset, cam_dir: str, out_dir: str, params: dict, shard: int, shards: int) -> dict:
    workers = section(params, "masks").get("workers") or None
    return export_masks(ds, cam_dir, out_dir, mask_params(params), workers=workers, shard=(shard, shards))


@stage_flow("masks", ["masks"])
def masks(params: dict, run) -> dict:
    """Export one pseudo mask per CAM file, in parallel, resumable."""
    cfg = section(params, "masks")
    cam_dir, out_dir = section(params, "cams")["out"], cfg["out"]
    ds = cam_split(params)
    settings = {"masks": {k: v for k, v in cfg.items() if k not in SCHEDULING_KEYS}, "cams": output_key(cam_dir)}
    prepare_output_dir(out_dir, settings, set(ds.table["id"]), ".png")
    stale = drop_stale(out_dir, cam_dir, ".png", ".npz")
    shards = max(1, int(cfg.get("shards", 1)))
    futures = mask_shard.map(unmapped(ds), unmapped(cam_dir), unmapped(out_dir), unmapped(params), range(shards),
                             unmapped(shards))
    stats = [f.result() for f in futures]
    metrics = {"images": len(ds), "written": sum(s["written"] for s in stats),
               "skipped": sum(s["skipped"] for s in stats), "redone_stale": stale,
               "seconds": max(s["seconds"] for s in stats),
               "seconds_per_image": sum(s["image_seconds"] for s in stats) / max(1, sum(s["written"] for s in stats))}
    run.log_metrics(metrics)
    print(metrics)
    return metrics


if __name__ == "__main__":
    main(masks, configure=with_task_runner("masks"))
