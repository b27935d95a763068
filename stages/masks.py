"""DVC stage `masks`: CAMs → (1 − max)^α background → dense CRF → confidence → VOC-palette PNGs.

Images run in a process pool on every core; shards map over the same task runner as `cams`. Each PNG
records the key of its inputs (the mask settings and its CAM file's key): masks made with other
settings, or from CAMs that have since been recomputed, are redone one by one; the rest are skipped.
"""

from __future__ import annotations

from stages.common import main, no_retry_on_user_error, shard_runner, stage


def mask_shard(ds, settings, shard: int) -> dict:
    from wsss.masks.export import export_masks, mask_params

    cfg = settings.masks
    return export_masks(ds, settings.cams.out, cfg.out, mask_params(cfg), workers=cfg.workers or None,
                        shard=(shard, cfg.shards))


def has_work(settings) -> bool:
    """A mask to write (missing or stale; the scan stops at the first) or one of an image no longer in
    the manifest."""
    from wsss.cam.runner import cam_split
    from wsss.masks.export import mask_params, stale_masks
    from wsss.shards import orphans

    cfg = settings.masks
    ds = cam_split(settings)
    return (next(stale_masks(ds, settings.cams.out, cfg.out, mask_params(cfg)), None) is not None
            or bool(orphans(cfg.out, set(ds.table["id"]), ".png")))


@stage("masks", ["masks"], task_runner=shard_runner("masks"), has_work=has_work,
       imports=("wsss.masks.export", "pydensecrf.densecrf"))
def masks(settings, run) -> dict:
    """Export one pseudo mask per CAM file, in parallel, resumable."""
    from prefect import task, unmapped

    from wsss.cam.runner import cam_split
    from wsss.shards import remove_orphans

    cfg = settings.masks
    ds = cam_split(settings)
    shard_task = task(mask_shard, name="mask-shard", retries=1, retry_condition_fn=no_retry_on_user_error)
    futures = shard_task.map(unmapped(ds), unmapped(settings), range(cfg.shards))
    stats = [f.result() for f in futures]
    removed = remove_orphans(cfg.out, set(ds.table["id"]), ".png")
    written = sum(s["written"] for s in stats)
    metrics = {"images": len(ds), "written": written, "skipped": sum(s["skipped"] for s in stats),
               "removed_orphans": removed, "seconds": max(s["seconds"] for s in stats),
               "seconds_per_image": sum(s["image_seconds"] for s in stats) / max(1, written)}
    run.log_metrics(metrics)
    print(metrics)
    return metrics


if __name__ == "__main__":
    main(masks)
