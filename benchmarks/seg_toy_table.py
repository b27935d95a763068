"""The segmenter ablation on the toy world: the pseudo masks it learns from, the segmenter trained on them
with the confidence-guided loss only, with SemPLeS's prompt-guided refinement added, and — as an upper
bound the product never uses — the same network trained on the ground-truth masks. val mIoU single-scale
and multi-scale + flip, and per-class IoU (multi-scale).

    python benchmarks/seg_toy_table.py                          # params.yaml's train settings, all rows
    python benchmarks/seg_toy_table.py --rows cgl refine        # only these rows
    python benchmarks/seg_toy_table.py -S iterations=2500       # other train settings for every row
    python benchmarks/seg_toy_table.py --report reports/seg_ablation   # also write <report>.md / .json

Needs the pipeline's pseudo masks, prompts and their evaluation (`dvc repro evaluate_masks`). Trains each
segmenter into a temporary folder (the pipeline's own is left alone). The refinement row uses
`train.prompt_refine` from params.yaml when it is > 0, else SemPLeS's VOC weight 0.05.
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

PUBLISHED_REFINE = 0.05  # SemPLeS, VOC
ROWS = {"cgl": "segmenter, confidence-guided loss only",
        "refine": "segmenter, + prompt-guided refinement",
        "gt": "same network on ground truth (UPPER BOUND, not the product)"}


def row_settings(settings, row: str, out: str, overrides: dict):
    train = replace(settings.train, out=out, checkpoint_every=10 ** 9, **overrides)
    if row == "cgl":
        train = replace(train, prompt_refine=0.0)
    elif row == "refine":
        train = replace(train, prompt_refine=train.prompt_refine or PUBLISHED_REFINE)
    else:
        train = replace(train, target="ground_truth", prompt_refine=0.0)
    return replace(settings, train=train)


def train_and_score(settings, val) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        s = replace(settings, train=replace(settings.train, out=tmp))
        t0 = time.perf_counter()
        stats = train_from_settings(s, progress=False)
        model, info = load_segmenter(Path(tmp) / SEGMENTER_FILE)
        single, _ = evaluate_segmenter(model, info, val, (1.0,), False, progress=False)
        multi, _ = evaluate_segmenter(model, info, val, settings.evaluate.scales, settings.evaluate.flip,
                                      progress=False)
    return {"val": single["miou"], "val_ms": multi["miou"], "prompt_refine": settings.train.prompt_refine,
            "seconds": time.perf_counter() - t0, "images_per_second": stats["images_per_second"],
            "per_class": {c: v["iou"] for c, v in multi["per_class"].items()}}


def markdown(results: dict, pseudo: dict, train_cfg) -> str:
    classes = list(next(iter(results.values()))["per_class"])
    head = ["val", "val, multi-scale + flip", *classes]
    lines = [f"Segmenter: arch {train_cfg.arch}, head {train_cfg.head}, width {train_cfg.width}, "
             f"{train_cfg.iterations} iterations. mIoU / IoU % on `val`; per class: multi-scale + flip.", "",
             "| | " + " | ".join(head) + " |", "|---" + "|---:" * len(head) + "|",
             f"| pseudo masks (made with the image labels known) | {100 * pseudo['val']['miou']:.1f} | – |"
             + " |" * len(classes)]
    for key, r in results.items():
        name = ROWS[key] + (f" (λ₃ = {r['prompt_refine']:g})" if key == "refine" else "")
        cells = [r["val"], r["val_ms"], *(r["per_class"][c] for c in classes)]
        lines.append(f"| {name} | " + " | ".join(f"{100 * c:.1f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="train.KEY=VALUE (YAML value)")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", default=None, help="write <report>.md and <report>.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = load_settings(REPO / "params.yaml")
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    pseudo = json.loads((REPO / settings.evaluate_masks.out / PSEUDO_METRICS).read_text())["pseudo"]
    val = read_dataset(REPO / settings.data.prepared).split(settings.evaluate.split)
    results = {row: train_and_score(row_settings(settings, row, "", overrides), val) for row in args.rows}
    table = markdown(results, pseudo, replace(settings.train, **overrides))
    print(table)
    if args.report:
        Path(f"{args.report}.md").write_text("# Segmenter ablation (`python benchmarks/seg_toy_table.py`)\n\n" + table)
        Path(f"{args.report}.json").write_text(json.dumps({"pseudo": pseudo, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
