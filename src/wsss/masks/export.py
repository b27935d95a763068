"""The `masks` stage's engine (docs/method.md §4): one CAM file + its image → one palette-PNG pseudo mask.

Each image is independent, so images run in a process pool (pydensecrf holds the GIL) and the result
never depends on the worker or shard count. Each PNG is written atomically with the key of its inputs
(the mask settings and its CAM file's own key): a rerun skips masks whose key matches and replaces
stale ones one by one, so an interrupt or a settings change never costs a finished mask.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from wsss.cam.store import CamRecord, cam_path, load_cam, stored_key
from wsss.data.images import load_rgb_array
from wsss.data.palette import save_palette_png, stored_png_key
from wsss.errors import DataError
from wsss.masks.crf import crf_refine
from wsss.masks.pseudo import argmax_labels, background_score, confidence_mask, stack_with_background
from wsss.parallel import run_pool
from wsss.settings import CrfSettings, MasksSettings
from wsss.shards import shard_rows

if TYPE_CHECKING:
    from wsss.data.manifest import Dataset

SOURCES = ("cam", "refined")
MASKS_VERSION = 1  # bump when the code changes the masks it writes from the same CAMs and settings


@dataclass(frozen=True)
class MaskParams:
    """How CAMs become a mask. `crf=None` is the CRF-less comparison mode: plain argmax of [bg, CAMs],
    no confidence filtering (raw CAMs are not probabilities). `confidence` applies to CRF marginals only;
    None or 0 keeps every pixel."""

    source: str = "refined"  # "refined" (CAA) or "cam" (raw GradCAM)
    alpha: float = 1.0  # background score exponent, bg = (1 − max CAM)^α
    crf: CrfSettings | None = field(default_factory=CrfSettings)
    confidence: float | None = 0.95


def mask_params(masks: MasksSettings) -> MaskParams:
    """The `masks` settings as the export's parameters (`use_crf: false` → no CRF)."""
    return MaskParams(source=masks.source, alpha=masks.alpha, crf=masks.crf if masks.use_crf else None,
                      confidence=masks.confidence)


def export_mask(image_rgb: np.ndarray | None, record: CamRecord, *, source: str = "refined", alpha: float = 1.0,
                crf: CrfSettings | None = CrfSettings(), confidence: float | None = 0.95) -> np.ndarray:
    """H×W uint8 mask of dataset ids (255 = low confidence). An image without labels is all background.
    `image_rgb` (H×W×3 uint8) is only needed with a CRF."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    maps = np.asarray(record.refined if source == "refined" else record.cam, dtype=np.float32)
    labels = np.asarray(record.labels).reshape(-1)
    if len(labels) == 0:
        return np.zeros(maps.shape[1:], dtype=np.uint8)
    bg = background_score(maps, alpha)
    if crf is None:
        return argmax_labels(maps, bg, labels)
    if image_rgb is None:
        raise ValueError("the CRF needs the image")
    probs = crf_refine(np.ascontiguousarray(image_rgb), stack_with_background(maps, bg), crf)
    return confidence_mask(probs, labels, confidence or 0.0)


def mask_for_image(image_path: str | Path | None, cam_file: str | Path, params: MaskParams,
                   image_loader: Callable[[Path], np.ndarray] = load_rgb_array) -> np.ndarray:
    """Load one CAM file (and its image when the CRF needs it) and export its mask."""
    record = load_cam(cam_file)
    image = None
    if params.crf is not None and len(record.labels):
        image = image_loader(Path(image_path))
        if image.shape[:2] != record.cam.shape[1:]:
            raise DataError(f"{cam_file}: CAMs are {record.cam.shape[1]}×{record.cam.shape[2]} but the image "
                            f"{image_path} is {image.shape[0]}×{image.shape[1]}")
    return export_mask(image, record, source=params.source, alpha=params.alpha, crf=params.crf,
                       confidence=params.confidence)


def _export_one(task: tuple) -> float:
    """Worker: one image → one PNG. Returns the seconds it took."""
    image_path, cam_file, out_path, params, key, exif = task
    start = time.perf_counter()
    loader = partial(load_rgb_array, exif=exif)
    save_palette_png(out_path, mask_for_image(image_path, cam_file, params, loader), key=key)
    return time.perf_counter() - start


def mask_key(params: MaskParams, cam_key: str | None) -> str:
    """What a mask depends on: the export parameters and the inputs of its CAM file."""
    from dataclasses import asdict

    from wsss.shards import fingerprint

    return fingerprint({"version": MASKS_VERSION, "params": asdict(params), "cam": cam_key})


def stale_masks(dataset: "Dataset", cam_dir: str | Path, out_dir: str | Path, params: MaskParams,
                shard: tuple[int, int] = (0, 1)):
    """The export tasks of this shard whose mask is missing or stale (its key is not the current one),
    lazily: a caller that only asks whether any work is left stops at the first."""
    for _, row in shard_rows(dataset.table, *shard).iterrows():
        out_path = Path(out_dir) / f"{row['id']}.png"
        cam_file = cam_path(cam_dir, row["id"])
        key = mask_key(params, stored_key(cam_file))
        if stored_png_key(out_path) != key:
            yield str(dataset.image_path(row)), str(cam_file), str(out_path), params, key, dataset.exif


def export_masks(dataset: "Dataset", cam_dir: str | Path, out_dir: str | Path, params: MaskParams | None = None, *,
                 workers: int | None = None, shard: tuple[int, int] = (0, 1), progress: bool = True,
                 start_method: str = "spawn") -> dict:
    """Write `<out_dir>/<id>.png` for every image of this shard whose PNG is missing or stale.

    Returns {"images", "written", "skipped", "workers", "shard", "seconds", "image_seconds",
    "seconds_per_image"}: `seconds` is wall time, `image_seconds` the summed per-image work time.
    """
    params = params or MaskParams()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = shard_rows(dataset.table, *shard)
    tasks = list(stale_masks(dataset, cam_dir, out_dir, params, shard))
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    if progress:
        print(f"masks shard {shard[0]}/{shard[1]}: {len(tasks)} mask(s) to write, {len(rows) - len(tasks)} already "
              f"current; {workers} worker(s)")
    start = time.perf_counter()
    per_image = run_pool(_export_one, tasks, workers=workers, desc=f"masks {shard[0]}/{shard[1]}",
                         progress=progress, start_method=start_method)
    seconds = time.perf_counter() - start
    return {"images": len(rows), "written": len(tasks), "skipped": len(rows) - len(tasks),
            "workers": workers, "shard": f"{shard[0]}/{shard[1]}", "seconds": round(seconds, 4),
            "image_seconds": round(float(sum(per_image)), 4),
            "seconds_per_image": round(seconds / len(tasks), 4) if tasks else None}
