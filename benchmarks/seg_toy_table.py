"""The segmenter ablation on the toy world: the pseudo masks it learns from, the segmenter trained on them
(the product, params.yaml's `train` settings), each lever changed on its own, and — as an upper bound the
product never uses — the same networks trained on the ground-truth masks. val mIoU single-scale and
multi-scale + flip, per-class IoU (multi-scale) and the seconds each row took to train. The product trains
twice (its self-training round); every other lever is measured against its first round.

    python benchmarks/seg_toy_table.py                          # every row
    python benchmarks/seg_toy_table.py --rows product gt        # only these rows
    python benchmarks/seg_toy_table.py -S iterations=2500       # other train settings for every row
    python benchmarks/seg_toy_table.py --report reports/seg_ablation   # also write <report>.md / .json
                                                                       # (rows not run keep the report's)

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
from wsss.seg.run import SEGMENTER_FILE, decoder_stride, train_from_settings  # noqa: E402
from wsss.settings import load_settings  # noqa: E402

PUBLISHED_REFINE = 0.05  # SemPLeS, VOC
BASE = {"self_training": 0}  # the levers below are each measured against the product without self-training
# row: (what it is, overrides of the train settings); "refine" gets its λ₃ in row_settings
ROWS = {
    "product": ("the product: segmenter, confidence-guided loss, one self-training round (params.yaml)", {}),
    "long": ("the product, 1,000 iterations a round", {"iterations": 1000}),
    "no_self_train": ("without self-training (the first round's segmenter)", BASE),
    "refine": ("without self-training, + prompt-guided refinement", BASE),
    "stride4": ("without self-training, decoder at stride 4 (DeepLab-V3+ as published)", {**BASE, "decoder_stride": 4}),
    "v3": ("without self-training, DeepLab-V3 head (no decoder)", {**BASE, "head": "deeplabv3", "decoder_stride": 4}),
    "gt": ("same network on ground truth (UPPER BOUND, not the product)", {**BASE, "target": "ground_truth"}),
    "gt_stride4": ("decoder at stride 4 on ground truth (UPPER BOUND)", {**BASE, "target": "ground_truth",
                                                                          "decoder_stride": 4}),
}


def row_settings(settings, row: str, out: str, overrides: dict):
    train = replace(settings.train, out=out, checkpoint_every=10 ** 9, **overrides)
    train = replace(train, prompt_refine=0.0, **ROWS[row][1])
    if row == "refine":
        train = replace(train, prompt_refine=settings.train.prompt_refine or PUBLISHED_REFINE)
    return replace(settings, train=train)


def train_and_score(settings, val) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        s = replace(settings, train=replace(settings.train, out=tmp))
        t0 = time.perf_counter()
        stats = train_from_settings(s, progress=False)
        seconds = time.perf_counter() - t0
        model, info = load_segmenter(Path(tmp) / SEGMENTER_FILE)
        single, _ = evaluate_segmenter(model, info, val, (1.0,), False, progress=False)
        multi, _ = evaluate_segmenter(model, info, val, settings.evaluate.scales, settings.evaluate.flip,
                                      progress=False)
    return {"val": single["miou"], "val_ms": multi["miou"], "prompt_refine": settings.train.prompt_refine,
            "seconds": seconds, "images_per_second": stats["images_per_second"],
            "per_class": {c: v["iou"] for c, v in multi["per_class"].items()}}


def markdown(results: dict, pseudo: dict, train_cfg) -> str:
    classes = list(next(iter(results.values()))["per_class"])
    head = ["val", "val, multi-scale + flip", "s to train", *classes]
    lines = [f"Segmenter (the product's settings): arch {train_cfg.arch}, head {train_cfg.head}, decoder stride "
             f"{decoder_stride(train_cfg)}, width {train_cfg.width}, {train_cfg.iterations} iterations, "
             f"{train_cfg.self_training} self-training round(s). mIoU / IoU % "
             "on `val`; per class: multi-scale + flip; seconds to train on this machine's CPU.", "",
             "| | " + " | ".join(head) + " |", "|---" + "|---:" * len(head) + "|",
             f"| pseudo masks (made with the image labels known) | {100 * pseudo['val']['miou']:.1f} | – | – |"
             + " |" * len(classes)]
    for key, r in results.items():
        name = ROWS[key][0] + (f" (λ₃ = {r['prompt_refine']:g})" if key == "refine" else "")
        cells = [f"{100 * c:.1f}" for c in (r["val"], r["val_ms"])] + [f"{r['seconds']:.0f}"]
        cells += [f"{100 * r['per_class'][c]:.1f}" for c in classes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
    if args.report and Path(f"{args.report}.json").is_file() and not overrides:  # rows not run keep theirs
        earlier = json.loads(Path(f"{args.report}.json").read_text())["rows"]
        results = {row: results.get(row) or earlier[row] for row in ROWS if row in results or row in earlier}
    table = markdown(results, pseudo, replace(settings.train, **overrides))
    print(table)
    if args.report:
        Path(f"{args.report}.md").write_text("# Segmenter ablation (`python benchmarks/seg_toy_table.py`)\n\n" + table)
        Path(f"{args.report}.json").write_text(json.dumps({"pseudo": pseudo, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
