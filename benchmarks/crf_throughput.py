"""CRF pseudo-mask throughput: the parallel exporter (`export_masks`, a process pool) against the plain
per-image loop (the same code with workers=1), on synthetic VOC-sized images (500×375, 2–3 classes).

    PYTHONPATH=src python benchmarks/crf_throughput.py --images 16 --workers 2

Prints a Markdown table: seconds per image for the bare `dense_crf` call, the plain loop (read image +
CAM, background score, CRF, confidence, PNG write) and the pool; and the pool's speed-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from wsss.cam.store import cam_path, load_cam, save_cam
from wsss.data.manifest import Dataset, make_table
from wsss.data.vocab import VOC_CLASSES, Vocabulary
from wsss.masks.crf import crf_refine
from wsss.settings import CrfSettings
from wsss.data.images import load_rgb_array as load_rgb
from wsss.masks.export import MaskParams, export_masks
from wsss.masks.pseudo import background_score, stack_with_background


def make_scene(rng, width, height, n_classes):
    """A textured background with n ellipses of distinct colours, plus blurry CAMs for them."""
    image = gaussian_filter(rng.normal(110, 40, (height, width, 3)), (6, 6, 0))
    yy, xx = np.mgrid[:height, :width]
    labels = sorted(rng.choice(np.arange(1, 21), n_classes, replace=False).tolist())
    cams = []
    for _ in labels:
        cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.12, 0.3) * height, rng.uniform(0.1, 0.25) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image[inside] = rng.uniform(0, 255, 3)
        cam = gaussian_filter(inside.astype(np.float32), 12)
        cams.append(cam / cam.max())
    return np.clip(image, 0, 255).astype(np.uint8), labels, np.stack(cams)


def build(root: Path, n_images, width, height, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        image, labels, cams = make_scene(rng, width, height, 2 + i % 2)
        Image.fromarray(image).save(root / f"{i:04d}.jpg", quality=90)
        save_cam(cam_path(root / "cams", f"{i:04d}"), labels, cams, cams)
        rows.append({"id": f"{i:04d}", "image": f"{i:04d}.jpg", "width": width, "height": height,
                     "split": "train", "labels": labels, "mask": ""})
    return Dataset(make_table(rows), Vocabulary(VOC_CLASSES), root, "bench")


def crf_only(ds: Dataset, params: CrfSettings) -> float:
    """Median seconds of the bare dense_crf call (inputs prepared beforehand)."""
    times = []
    for _, row in ds.table.iterrows():
        image = load_rgb(ds.image_path(row))
        record = load_cam(cam_path(ds.root / "cams", row["id"]))
        maps = record.refined.astype(np.float32)
        stack = stack_with_background(maps, background_score(maps))
        start = time.perf_counter()
        crf_refine(image, stack, params)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--start-method", default="spawn", choices=["spawn", "forkserver", "fork"])
    args = ap.parse_args(argv)
    params = MaskParams(crf=CrfSettings(iterations=args.iterations))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = build(root, args.images, args.width, args.height)
        bare = crf_only(ds, params.crf)
        loop = export_masks(ds, root / "cams", root / "loop", params, workers=1, progress=False)
        pool = export_masks(ds, root / "cams", root / "pool", params, workers=args.workers, progress=False,
                            start_method=args.start_method)
        same = all((root / "loop" / p.name).read_bytes() == p.read_bytes() for p in (root / "pool").glob("*.png"))
    print(f"{args.images} images {args.width}×{args.height}, 2–3 classes, {args.iterations} CRF iterations, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python {sys.version.split()[0]}; "
          f"pool start method {args.start_method}; pool output identical to loop: {same}; "
          f"load average after the run {os.getloadavg()[0]:.1f}\n")
    print("| mode | workers | s / image | images / s |")
    print("|---|---:|---:|---:|")
    print(f"| `dense_crf` call only | 1 | {bare:.3f} | {1 / bare:.2f} |")
    for name, s in (("plain per-image loop", loop), ("`export_masks` pool", pool)):
        print(f"| {name} | {s['workers']} | {s['seconds_per_image']:.3f} | {1 / s['seconds_per_image']:.2f} |")
    print(f"\nspeed-up of the pool over the loop: {loop['seconds'] / pool['seconds']:.2f}×")


if __name__ == "__main__":
    main()
