"""The toy-world result table: pseudo masks (train, val), the segmenter trained on them (val, single-scale
and multi-scale + flip), and as an upper bound the same segmenter trained on the ground-truth masks.

    python benchmarks/seg_toy_table.py                       # params.yaml's train/evaluate settings
    python benchmarks/seg_toy_table.py -S iterations=2500    # other train settings for both runs

Needs the pipeline's pseudo masks and their evaluation (`dvc repro evaluate_masks`). Trains each segmenter
into a temporary folder (the pipeline's own is left alone). The ground-truth row is an experiment only:
nothing in the product's path trains on ground truth.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wsss.data.manifest import read_dataset  # noqa: E402
from wsss.metrics.headline import PSEUDO_METRICS  # noqa: E402
from wsss.seg.infer import evaluate_segmenter, load_segmenter  # noqa: E402
from wsss.seg.run import SEGMENTER_FILE, train_from_settings  # noqa: E402
from wsss.settings import load_settings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="train.KEY=VALUE (YAML value)")
    ap.add_argument("--targets", nargs="+", default=["pseudo", "ground_truth"], choices=["pseudo", "ground_truth"],
                    help="which segmenters to train (the pipeline's own reports/metrics.json holds the pseudo one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = load_settings(REPO / "params.yaml")
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    pseudo = json.loads((REPO / settings.evaluate_masks.out / PSEUDO_METRICS).read_text())["pseudo"]
    val = read_dataset(REPO / settings.data.prepared).split(settings.evaluate.split)
    rows = {"pseudo masks (CLIP-ES + learned prompts + CRF)": {"train": pseudo["train"]["miou"],
                                                               "val": pseudo["val"]["miou"]}}
    for target in args.targets:
        with tempfile.TemporaryDirectory() as tmp:
            s = replace(settings, train=replace(settings.train, out=tmp, target=target, checkpoint_every=10 ** 9,
                                                **overrides))
            t0 = time.perf_counter()
            stats = train_from_settings(s, progress=False)
            model, info = load_segmenter(Path(tmp) / SEGMENTER_FILE)
            single, _ = evaluate_segmenter(model, info, val, (1.0,), False, progress=False)
            multi, _ = evaluate_segmenter(model, info, val, settings.evaluate.scales, settings.evaluate.flip,
                                          progress=False)
        name = ("segmenter on the pseudo masks" if target == "pseudo"
                else "segmenter on ground truth (UPPER BOUND, not the product)")
        rows[name] = {"val": single["miou"], "val multi-scale + flip": multi["miou"],
                      "train seconds": time.perf_counter() - t0, "images/s": stats["images_per_second"],
                      "per class (multi)": {c: v["iou"] for c, v in multi["per_class"].items()}}
    print(f"train settings: {settings.train.arch} width {settings.train.width}, {overrides or 'params.yaml'}\n")
    print("| mIoU % | train | val | val, multi-scale + flip |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        cells = [r.get("train"), r.get("val"), r.get("val multi-scale + flip")]
        print(f"| {name} | " + " | ".join("–" if c is None else f"{100 * c:.1f}" for c in cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
