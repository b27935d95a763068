"""Learned background prompts on the toy world: words vs learned vs both, per class, at CAM, CAA and CRF
level, with each planted class's IoU on its home background against elsewhere (docs/method.md §6).

    python benchmarks/prompt_ablation.py                               # params.yaml's prompts settings
    python benchmarks/prompt_ablation.py -S length=16 -S init=uniform  # try other prompt settings
    python benchmarks/prompt_ablation.py --seeds 0 1 2                 # the spread over training seeds
    python benchmarks/prompt_ablation.py -S crops=augmented --variants learned  # one background set only

Needs the pipeline's teacher CAMs (`dvc repro teacher`). Learns the prompts into a temporary folder with
the given overrides of the `prompts` section (the pipeline's own prompts are left alone), then scores the
three background sets on the prompts' training split: argmax with α = 1 (CAM, CAA) and the masks stage's
CRF + confidence (CRF). Ground truth is read here only to score.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wsss.cam.store import CamRecord  # noqa: E402
from wsss.data.images import load_rgb  # noqa: E402
from wsss.data.palette import load_mask  # noqa: E402
from wsss.masks.export import export_mask, mask_params  # noqa: E402
from wsss.metrics.confusion import ConfusionMatrix  # noqa: E402
from wsss.prompts.background import cam_engine  # noqa: E402
from wsss.prompts.run import learn_prompts, training_split  # noqa: E402
from wsss.settings import load_settings  # noqa: E402
from wsss.toyworld.captions import read_facts  # noqa: E402

VARIANTS = ("words", "learned", "both")
LEVELS = ("CAM", "CAA", "CRF")


def score(settings, ds, variant: str, planted: dict[str, str], limit: int | None) -> dict:
    """Per level: mIoU, per-class IoU and each planted class's IoU at home / elsewhere (in %)."""
    engine = cam_engine(replace(settings, text=replace(settings.text, background_prompts=variant)), ds.vocab)
    mp = mask_params(settings.masks)
    names = ["background", *ds.vocab.names]
    cms = {level: ConfusionMatrix(len(names)) for level in LEVELS}
    groups = defaultdict(lambda: np.zeros(3))  # (level, class, at home) → TP, FP, FN
    for _, row in tqdm(list(ds.table.iterrows())[:limit], desc=variant, leave=False):
        image, gt = load_rgb(ds.image_path(row)), load_mask(ds.mask_path(row))
        facts, _ = read_facts(Path(ds.root) / "Annotations" / f"{row['id']}.xml")
        labels = list(row["labels"])
        out = engine(image, [c - 1 for c in labels])
        record = CamRecord(np.array(labels), out.cam, out.refined)
        preds = {"CAM": export_mask(None, record, source="cam", alpha=1.0, crf=None),
                 "CAA": export_mask(None, record, source="refined", alpha=1.0, crf=None),
                 "CRF": export_mask(np.asarray(image), record, source=mp.source, alpha=mp.alpha, crf=mp.crf,
                                    confidence=mp.confidence)}
        valid = gt != 255
        for level, pred in preds.items():
            cms[level].update(pred, gt)
            for name, home in planted.items():
                k = names.index(name)
                if k in labels:
                    p, g = (pred == k) & valid, (gt == k) & valid
                    groups[(level, name, facts.background == home)] += (p & g).sum(), (p & ~g).sum(), (~p & g).sum()
    result = {}
    for level, cm in cms.items():
        r = cm.compute()
        iou = lambda c: 100 * c[0] / c.sum() if c.sum() else float("nan")  # noqa: E731
        result[level] = {"miou": 100 * r["miou"], "iou": {n: 100 * v for n, v in zip(names, r["iou"])},
                         "home": {c: iou(groups[(level, c, True)]) for c in planted},
                         "away": {c: iou(groups[(level, c, False)]) for c in planted}}
    return result


def table(results: dict, names: list[str], planted: dict[str, str]) -> str:
    head = ["mIoU", *names, *(f"{c} at home ({h})" for c, h in planted.items()), "planted at home (mean)"]
    lines = ["| | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for level in LEVELS:
        for v in results:
            r = results[v][level]
            cells = [r["miou"], *(r["iou"][n] for n in names), *(r["home"][c] for c in planted),
                     np.mean([r["home"][c] for c in planted])]
            lines.append(f"| {v}: {level} | " + " | ".join(f"{x:.1f}" for x in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="prompts.KEY=VALUE (YAML value)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="train once per seed, report each")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                    help="background sets to score (default: all three)")
    ap.add_argument("--images", type=int, default=None, help="score at most this many images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_settings(REPO / "params.yaml")
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    report = []
    for seed in args.seeds or [None]:
        extra = {} if seed is None else {"seed": seed}
        with tempfile.TemporaryDirectory() as tmp:
            settings = replace(base, prompts=replace(base.prompts, out=tmp, **overrides, **extra))
            t0 = time.perf_counter()
            learned = learn_prompts(settings, progress=False)
            seconds = time.perf_counter() - t0
            ds = training_split(settings)
            planted = json.loads((Path(ds.root) / "stats.json").read_text()).get("cooccurrence", {})
            results = {v: score(settings, ds, v, planted, args.images) for v in args.variants}
        names = ["background", *ds.vocab.names]
        print(f"\nprompts {({**overrides, **extra}) or '(params.yaml)'}: learned in {seconds:.1f} s, "
              f"final loss {learned.history[-1]['loss']:.4f}; IoU % on {args.images or len(ds)} `{ds.table['split'][0]}` images\n")
        print(table(results, names, planted))
        report.append({"overrides": {**overrides, **extra}, "seconds_learning": seconds,
                       "described": learned.described, "results": results})
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
