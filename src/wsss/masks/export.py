"""The `masks` stage's engine (method.md §4): one CAM file + its image → one palette-PNG pseudo mask.

Each image is independent, so images run in a process pool (pydensecrf holds the GIL) and the result
never depends on the worker or shard count. Outputs are written atomically, so a PNG that exists is
complete: a re-run skips it (resume after an interruption). The skip does not look at parameters —
changed parameters need a fresh output folder (DVC removes a stage's outputs before re-running it).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from wsss.cam.store import CamRecord, cam_path, load_cam
from wsss.data.images import load_rgb_array
from wsss.errors import ConfigError, DataError
from wsss.masks.crf import CrfParams, crf_refine
from wsss.masks.palette import save_palette_png
from wsss.shards import shard_rows
from wsss.masks.pseudo import argmax_labels, background_score, confidence_mask, stack_with_background

if TYPE_CHECKING:
    from wsss.data.manifest import Dataset

SOURCES = ("cam", "refined")


@dataclass(frozen=True)
class MaskParams:
    """How CAMs become a mask. `crf=None` is the CRF-less comparison mode: plain argmax of [bg, CAMs],
    no confidence filtering (raw CAMs are not probabilities). `confidence` applies to CRF marginals only;
    None or 0 keeps every pixel."""

    source: str = "refined"  # "refined" (CAA) or "cam" (raw GradCAM)
    alpha: float = 1.0  # background score exponent, bg = (1 − max CAM)^α
    crf: CrfParams | None = field(default_factory=CrfParams)
    confidence: float | None = 0.95

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ConfigError(f"masks.source must be one of {SOURCES}, got {self.source!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"masks.alpha must be a number > 0, got {self.alpha!r}")
        if self.confidence is not None and not 0 <= self.confidence <= 1:
            raise ConfigError(f"masks.confidence must be in [0, 1], got {self.confidence!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "MaskParams":
        """From params.yaml: keys source, alpha, confidence, crf (a dict of CrfParams fields, or
        null/false to disable) and optionally use_crf (bool) to switch the CRF off while keeping its
        settings."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)} | {"use_crf"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown masks setting(s) {unknown}; known: {sorted(known)}")
        use_crf = d.pop("use_crf", True)
        crf = d.pop("crf", {})
        if crf is not None and crf is not False and not isinstance(crf, dict):
            raise ConfigError(f"masks.crf must be a mapping of CRF settings or null, got {crf!r}")
        enabled = bool(use_crf) and isinstance(crf, dict)
        return cls(crf=CrfParams.from_dict(crf) if enabled else None, **d)


def export_mask(image_rgb: np.ndarray | None, record: CamRecord, *, source: str = "refined", alpha: float = 1.0,
                crf: CrfParams | None = CrfParams(), confidence: float | None = 0.95) -> np.ndarray:
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
    image_path, cam_file, out_path, params = task
    start = time.perf_counter()
    save_palette_png(out_path, mask_for_image(image_path, cam_file, params))
    return time.perf_counter() - start


def run_pool(fn: Callable, tasks: list, *, workers: int | None, desc: str, progress: bool,
             start_method: str = "spawn") -> list:
    """fn over tasks with a tqdm bar, results in task order; workers ≤ 1 runs in this process.
    Spawned (not forked) workers: safe even when the caller has threads or torch loaded. On the first
    failure the remaining tasks are cancelled and the error is re-raised."""
    from tqdm import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    results = [None] * len(tasks)
    with tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress) as bar:
        if workers == 1:
            for i, task in enumerate(tasks):
                results[i] = fn(task)
                bar.update()
            return results
        ctx = multiprocessing.get_context(start_method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    if fut.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise fut.exception()
                    results[futures[fut]] = fut.result()
                    bar.update()
    return results


def export_masks(dataset: "Dataset", cam_dir: str | Path, out_dir: str | Path, params: MaskParams | None = None, *,
                 workers: int | None = None, shard: tuple[int, int] = (0, 1), progress: bool = True,
                 start_method: str = "spawn") -> dict:
    """Write `<out_dir>/<id>.png` for every image of this shard whose PNG is not there yet.

    Returns {"images", "written", "skipped", "workers", "shard", "seconds", "image_seconds",
    "seconds_per_image"}: `seconds` is wall time, `image_seconds` the summed per-image work time.
    """
    params = params or MaskParams()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = dataset.table
    rows = shard_rows(table, *shard)
    tasks = []
    for _, row in rows.iterrows():
        out_path = out_dir / f"{row['id']}.png"
        if out_path.exists():
            continue
        tasks.append((str(dataset.image_path(row)), str(cam_path(cam_dir, row["id"])), str(out_path), params))
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    start = time.perf_counter()
    per_image = run_pool(_export_one, tasks, workers=workers, desc=f"masks {shard[0]}/{shard[1]}",
                         progress=progress, start_method=start_method)
    seconds = time.perf_counter() - start
    return {"images": len(rows), "written": len(tasks), "skipped": len(rows) - len(tasks),
            "workers": workers, "shard": f"{shard[0]}/{shard[1]}", "seconds": round(seconds, 4),
            "image_seconds": round(float(sum(per_image)), 4),
            "seconds_per_image": round(seconds / len(tasks), 4) if tasks else None}
