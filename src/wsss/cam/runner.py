"""Run the CAM engine over a shard of the manifest: one compressed CAM file per image, resumable.

An image is skipped when its CAM file exists with the same input key (image bytes + labels + the CAM
settings' fingerprint), so an interrupted run picks up where it stopped and produces the same files as an
uninterrupted one, and a settings change replaces stale files one by one as new ones are written: nothing
finished is deleted before its replacement exists.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from wsss.cam.store import cam_path, save_cam, stored_key
from wsss import interrupt
from wsss.data.manifest import Dataset
from wsss.progress import WarmProgress
from wsss.settings import Settings
from wsss.shards import shard_rows


def cam_split(settings: Settings) -> Dataset:
    """The prepared images of the splits the `cams` stage covers (and so `masks` and `evaluate_masks`)."""
    from wsss.data.manifest import read_dataset

    ds = read_dataset(settings.data.prepared)
    present = set(ds.table["split"])
    missing = [s for s in settings.cams.splits if s not in present]
    if missing:
        print(f"cams: no split {', '.join(map(repr, missing))} in the prepared dataset (it has "
              f"{', '.join(sorted(present))}); cams.splits lists it, no CAMs for it", file=sys.stderr)
    keep = ds.table["split"].isin(settings.cams.splits)
    return ds.subset(keep)


def input_key(image_path: Path, labels, settings_key: str = "", exif: str = "ignore") -> str:
    """The image's bytes, its labels, the settings' fingerprint and, when `exif: apply` turns this image,
    its orientation: the pixels the CAM was made from (an image without a tag keeps its key either way)."""
    from wsss.data.images import bytes_orientation

    data = image_path.read_bytes()
    digest = hashlib.sha1(data)
    digest.update(repr(tuple(int(x) for x in labels)).encode())
    digest.update(settings_key.encode())
    orientation = bytes_orientation(data) if exif == "apply" else 1
    if orientation != 1:
        digest.update(f"exif-orientation={orientation}".encode())
    return digest.hexdigest()


@dataclass
class ShardStats:
    shard: int
    computed: int = 0
    skipped: int = 0
    reused: int = 0
    pixels: int = 0
    seconds: float = 0.0


def row_status(ds: Dataset, cam_dir: str | Path, settings_key: str = "", shard: int = 0, shards: int = 1):
    """(row, input key, whether its CAM file is current) for each row of this shard, lazily: a caller that
    only asks whether any work is left stops at the first stale row."""
    for _, row in shard_rows(ds.table, shard, shards).iterrows():
        key = input_key(ds.image_path(row), row["labels"], settings_key, ds.exif)
        yield row, key, stored_key(cam_path(cam_dir, row["id"])) == key


def stale_rows(ds: Dataset, cam_dir: str | Path, settings_key: str = "", shard: int = 0,
               shards: int = 1) -> tuple[list, int]:
    """The rows of this shard whose CAM file is missing or stale, with their input keys, and how many
    are current."""
    todo, current = [], 0
    for row, key, is_current in row_status(ds, cam_dir, settings_key, shard, shards):
        if is_current:
            current += 1
        else:
            todo.append((row, key))
    return todo, current


def reuse(todo: list, cam_dir: str | Path, reuse_dir: str | Path) -> tuple[list, int]:
    """Copy the files of `reuse_dir` that have exactly the wanted key (the same maps, already computed);
    returns the rows still to compute and how many were copied."""
    import shutil

    from wsss.io import atomic_path

    left, copied = [], 0
    for row, key in todo:
        source = cam_path(reuse_dir, row["id"])
        if stored_key(source) != key:
            left.append((row, key))
            continue
        with atomic_path(cam_path(cam_dir, row["id"])) as tmp:
            shutil.copyfile(source, tmp)
        copied += 1
    return left, copied


def batch_size(engine) -> int:
    """Images per trunk forward: `cams.batch_size` on a GPU; one on a CPU, where batching gains little and a
    batch's composition (which depends on the shard count and on what an interrupted run left) changes how
    the CPU kernels sum, moving some fp16 maps by one unit in the last place: one image at a time, a CAM
    file is the same bytes whatever the shards, the resumptions or the Dask workers."""
    return max(1, engine.config.batch_size) if engine.device.type != "cpu" else 1


def compute_shard(ds: Dataset, cam_dir: str | Path, engine_factory: Callable, settings_key: str = "",
                  shard: int = 0, shards: int = 1, progress: bool = True,
                  reuse_dir: str | Path | None = None) -> ShardStats:
    """Compute the CAM files of shard `shard` of `shards`; `engine_factory()` returns a `CamEngine`.
    Files with the same key in `reuse_dir` are copied instead. Stops between batches when a stop is
    requested (`wsss.interrupt`)."""
    todo, current = stale_rows(ds, cam_dir, settings_key, shard, shards)
    stats = ShardStats(shard, skipped=current)
    if reuse_dir is not None and todo:
        todo, stats.reused = reuse(todo, cam_dir, reuse_dir)
        print(f"cams shard {shard}/{shards}: {stats.reused} CAM file(s) copied from {reuse_dir} (same key)")
    print(f"cams shard {shard}/{shards}: {len(todo)} image(s) to compute, {stats.skipped} already current")
    if not todo:
        return stats
    from wsss.cam.engine import size_groups  # torch: only when there is work

    engine = engine_factory()
    sizes = [(int(row["width"]), int(row["height"])) for row, _ in todo]
    groups = size_groups(sizes, engine.patch_size, batch_size(engine))
    start = time.perf_counter()
    with WarmProgress(len(todo), f"cams shard {shard}/{shards}", disable=not progress) as bar:
        for group in groups:
            interrupt.check()
            batch = [todo[i] for i in group]
            images = [ds.load_rgb(row) for row, _ in batch]
            labels = [list(row["labels"]) for row, _ in batch]
            outs = engine.run_batch(images, [[c - 1 for c in ls] for ls in labels])
            for (row, key), image, ls, out in zip(batch, images, labels, outs):
                refined = out.refined if out.refined is not None else out.cam
                save_cam(cam_path(cam_dir, row["id"]), ls, out.cam, refined, key=key)
                stats.pixels += image.width * image.height
            stats.computed += len(batch)
            bar.update(len(batch))
    stats.seconds = time.perf_counter() - start
    return stats
