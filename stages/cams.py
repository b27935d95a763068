"""DVC stage `cams`: CLIP-ES softmax-GradCAM + CAA for every image of the chosen splits.

The manifest is split into shards mapped over a Prefect task runner: threads on one machine by default,
a Dask cluster (one worker per GPU) when `cams.dask_address` is set. The softmax's background set is
`text.background_prompts`: the hand-written words, the learned per-class prompts (stage `prompts`), or both. Outputs do not depend on the shard
count. Each CAM file carries the key of its inputs (image, labels, every setting that changes the maps),
so a rerun recomputes exactly the stale images, replacing them one by one: a bad setting or an interrupt
never costs finished files.
"""

from __future__ import annotations

import time
from pathlib import Path

from stages.common import main, no_retry_on_user_error, shard_runner, stage


def cam_shard(ds, settings, settings_key: str, shard: int):
    from wsss.cam.runner import compute_shard
    from wsss.prompts.background import cam_engine

    return compute_shard(ds, settings.cams.out, lambda: cam_engine(settings, ds.vocab, shard=shard),
                         settings_key, shard, settings.cams.shards, progress=True, reuse_dir=reuse_dir(settings))


def reuse_dir(settings) -> str | None:
    """With the hand-written words only, the teacher's CAM files are these CAMs: copy them, do not recompute."""
    from pathlib import Path

    teacher = settings.prompts.teacher
    if settings.text.background_prompts != "words" or Path(teacher).resolve() == Path(settings.cams.out).resolve():
        return None
    return teacher


def has_work(settings) -> bool:
    """A CAM file to compute (missing or stale; the scan stops at the first) or one of an image no
    longer in the manifest."""
    from wsss.cam.factory import check_clip_source
    from wsss.cam.runner import cam_split, row_status
    from wsss.prompts.background import cam_key
    from wsss.shards import orphans

    check_clip_source(settings.clip)
    ds = cam_split(settings)
    key = cam_key(settings)
    return (any(not current for _, _, current in row_status(ds, settings.cams.out, key))
            or bool(orphans(settings.cams.out, set(ds.table["id"]), ".npz")))


@stage("cams", ["clip", "text", "cams"], task_runner=shard_runner("cams"), has_work=has_work,
       imports=("torch", "open_clip", "wsss.cam.engine", "wsss.clip.model", "wsss.metrics.plots"))
def cams(settings, run) -> dict:
    """Shard the manifest, map the shards over the task runner, log throughput and overlays."""
    from prefect import task, unmapped

    from wsss.cam.factory import check_clip_source
    from wsss.cam.runner import cam_split
    from wsss.cam.store import OVERLAYS
    from wsss.metrics.plots import example_grid, example_rows
    from wsss.prompts.background import cam_key
    from wsss.shards import remove_orphans

    cfg = settings.cams
    check_clip_source(settings.clip)
    ds = cam_split(settings)
    key = cam_key(settings)
    shard_task = task(cam_shard, name="cam-shard", retries=1, retry_condition_fn=no_retry_on_user_error)
    start = time.perf_counter()
    futures = shard_task.map(unmapped(ds), unmapped(settings), unmapped(key), range(cfg.shards))
    stats = [f.result() for f in futures]
    seconds = time.perf_counter() - start
    removed = remove_orphans(cfg.out, set(ds.table["id"]), ".npz")
    computed = sum(s.computed for s in stats)
    metrics = {"images": len(ds), "computed": computed, "skipped": sum(s.skipped for s in stats),
               "reused": sum(s.reused for s in stats),
               "removed_orphans": removed, "seconds": seconds,
               "images_per_second": computed / seconds if computed else 0.0,
               "megapixels_per_second": sum(s.pixels for s in stats) / 1e6 / seconds if computed else 0.0}
    run.log_metrics(metrics)
    Path(OVERLAYS).parent.mkdir(parents=True, exist_ok=True)  # a DVC output, even with no overlays drawn
    if len(ds) and cfg.overlays:
        rows, ids = example_rows(ds, cfg.out, mask_dir=cfg.out, n=cfg.overlays)  # no masks yet
        grid = example_grid([r[:4] for r in rows], Path(OVERLAYS), titles=("image", "ground truth", "CAM", "CAA"),
                            row_labels=ids)
        run.log_artifact(grid, "overlays")
    print({k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()})
    return metrics


if __name__ == "__main__":
    main(cams)
