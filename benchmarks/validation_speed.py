"""Validation speed and memory on VOC-size drops, and the label audit's CLIP scoring rate, separately.

    PYTHONPATH=src python benchmarks/validation_speed.py                          # 10,000 images, 2 threads
    PYTHONPATH=src python benchmarks/validation_speed.py --images 2000 10000      # memory flat in the count?
    PYTHONPATH=src python benchmarks/validation_speed.py --images 500 --clip-images 64 --vit-b16

Fabricates a custom drop in a temporary folder (nothing committed): --images photo-like JPEGs of 500×375
(VOC's typical size; a colour field, clutter, labelled shapes and noise, distinct per image) with a palette mask each
and labels that agree with it, then runs `validate_dataset` (every check: decode, hashes, blank, EXIF,
label/mask agreement, near-duplicates within the drop and against a content store of as many images,
drift, Great Expectations and Data Docs) with the label audit off, in a child process per size so that its
peak RSS is its own. `validation.workers` threads (--workers). CLIP scoring (the audit's only costly part)
is timed on its own: --clip-images of these images through `wsss.clip.scores.ClassScorer` with the
configured CLIP (params.yaml's toy CLIP) and, with --vit-b16, an untrained ViT-B-16 (same cost as
OpenAI's weights; nothing downloads), in images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SIZE = (500, 375)
CLASSES = ("cat", "dog", "bird", "car", "person")


def _make(args) -> tuple[str, str]:
    import numpy as np
    from PIL import Image, ImageDraw

    root, k = args
    rng = np.random.default_rng(k)
    image = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8), "RGB").resize(SIZE, Image.BICUBIC)
    noise = rng.integers(-12, 13, (SIZE[1], SIZE[0], 3))
    image = Image.fromarray(np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):  # clutter: a photo's many edges (a plain colour field hashes too alike)
        x, y = int(rng.integers(0, 450)), int(rng.integers(0, 330))
        draw.rectangle([x, y, x + int(rng.integers(10, 80)), y + int(rng.integers(10, 60))],
                       fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    mask = Image.new("L", SIZE, 0)
    labels = sorted(set(int(c) for c in rng.integers(1, len(CLASSES) + 1, rng.integers(1, 3))))
    for c in labels:
        x, y = int(rng.integers(0, 350)), int(rng.integers(0, 250))
        box = [x, y, x + int(rng.integers(60, 150)), y + int(rng.integers(60, 120))]
        ImageDraw.Draw(image).ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        ImageDraw.Draw(mask).ellipse(box, fill=c)
    image.save(Path(root) / "images" / f"{k:06d}.jpg", quality=90)
    mask.save(Path(root) / "masks" / f"{k:06d}.png")
    return f"{k:06d}.jpg", ";".join(CLASSES[c - 1] for c in labels)


def fabricate(root: Path, n: int, first: int = 0, split: str = "train") -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    with ProcessPoolExecutor(2) as pool:
        rows = list(pool.map(_make, [(str(root), k) for k in range(first, first + n)], chunksize=64))
    (root / "labels.csv").write_text("image,labels,split\n" + "".join(f'{i},"{ls}",{split}\n' for i, ls in rows))


def run_validation(root: str, reference: str | None, workers: int) -> dict:
    """In this process: read + validate the drop (label audit off), against the reference store if any."""
    from dataclasses import replace

    from wsss.data.readers import read_dataset_source
    from wsss.settings import Settings
    from wsss.validation import validate_dataset
    from wsss.validation.store import load_store

    settings = Settings()
    rules = replace(settings.validation, label_audit="off", workers=workers)
    start = time.perf_counter()
    ds = read_dataset_source(root, format="custom")
    read = time.perf_counter() - start
    store = load_store(reference) if reference else None
    res = validate_dataset(ds, Path(root).parent / "report", rules=rules, settings=settings, workers=workers,
                           reference=store, progress=False)
    wall = time.perf_counter() - start
    if not reference:  # the dataset's own store, for the next run to compare with
        res.store(ds.vocab.names).save(Path(root).parent / "content.npz")
    return {"images": len(ds), "seconds": round(wall, 1), "read_seconds": round(read, 1),
            "success": res.success, "warnings": len(res.warnings), "failed": res.summary["failed_checks"],
            "warned": res.summary["warned_checks"], "findings": [ln[:300] for ln in res.verdicts + res.warnings],
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def clip_rate(root: Path, n: int, model: str, pretrained: str | None) -> dict:
    import torch

    from wsss.clip.scores import ClassScorer, score_images
    from wsss.data.images import load_rgb
    from wsss.settings import ClipSettings, TextSettings

    files = sorted((root / "images").glob("*.jpg"))[:n]
    images = [load_rgb(f) for f in files]
    scorer = ClassScorer(ClipSettings(model=model, pretrained=pretrained), TextSettings(), CLASSES, device=None)
    score_images(scorer, images[:4], 4, progress=False)  # warm-up
    start = time.perf_counter()
    score_images(scorer, images, len(images), progress=False)
    seconds = time.perf_counter() - start
    return {"model": model, "device": str(scorer.device), "threads": torch.get_num_threads(), "images": len(images),
            "images_per_s": round(len(images) / seconds, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clip-images", type=int, default=128)
    parser.add_argument("--vit-b16", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "REFERENCE", "WORKERS"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="validation_speed.json")
    args = parser.parse_args(argv)
    if args.child:
        root, reference, workers = args.child
        print(json.dumps(run_validation(root, reference if reference != "-" else None, int(workers))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="validation-speed-") as tmp:
        for n in args.images:
            base, drop = Path(tmp) / f"base{n}" / "data", Path(tmp) / f"drop{n}" / "data"
            start = time.perf_counter()
            fabricate(base, n, 10_000_000, "val")  # the dataset the drop joins: its store is the reference
            fabricate(drop, n)
            made = time.perf_counter() - start
            env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
            child = [sys.executable, __file__, "--child"]
            subprocess.run(child + [str(base), "-", str(args.workers)], check=True, env=env, capture_output=True)
            out = subprocess.run(child + [str(drop), str(base.parent / "content.npz"), str(args.workers)],
                                 check=True, env=env, capture_output=True, text=True)
            row = {**json.loads(out.stdout.strip().splitlines()[-1]), "fabricated_seconds": round(made, 1)}
            rows.append(row)
            print(f"{n} images: validated in {row['seconds']} s (reading {row['read_seconds']} s), peak RSS "
                  f"{row['peak_rss_mib']} MiB, {row['warnings']} warning(s), passed {row['success']}", flush=True)
            for line in row["findings"]:
                print(f"  {line}")
        drop = Path(tmp) / f"drop{args.images[-1]}" / "data"
        from wsss.settings import ClipSettings

        clip = ClipSettings()
        rates = [clip_rate(drop, args.clip_images, clip.model, str(REPO / clip.pretrained))]
        if args.vit_b16:
            rates.append(clip_rate(drop, min(args.clip_images, 32), "ViT-B-16", None))
        for r in rates:
            print(f"CLIP scoring ({r['model']}, {r['device']}, {r['threads']} threads): {r['images_per_s']} images/s "
                  f"on {r['images']} VOC-size images", flush=True)
    load = os.getloadavg()
    Path(args.out).write_text(json.dumps({"validation": rows, "clip": rates, "workers": args.workers,
                                          "load_average": load, "cpus": os.cpu_count()}, indent=2))
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
