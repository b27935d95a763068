"""Quality of the toy world + toy CLIP: zero-shot recognition and plain softmax-GradCAM segmentation.

    PYTHONPATH=src python benchmarks/toy_quality.py                       # committed checkpoint, toy val
    PYTHONPATH=src python benchmarks/toy_quality.py --images 200 --caa    # also the CAA-refined maps
    PYTHONPATH=src python benchmarks/toy_quality.py --generation 5000     # also time the generator

Measures, on the val split of a toy world (generated with the default parameters into --root when missing):
(a) zero-shot multi-label recognition: class texts `encode_class_texts(names, templates)`, the image
    embedding `model.encode_image` (mean of the ln_post'ed patch tokens, projected: docs/method.md §2); per-class
    average precision over the images → mAP, and the share of images whose present classes all score above
    every absent class;
(b) plain softmax-GradCAM (`wsss.cam.engine.CamEngine`, no refinement unless --caa), present classes from
    the labels, background = (1 − max_k CAM_k)^α, argmax → label map; mIoU over background + classes from
    `wsss.metrics.confusion.ConfusionMatrix` (255 ignored), per-class IoU, the mean IoU of the classes
    planted on a home background (stats.json) against the others, and the leak itself: the planted
    classes' IoU on images where they sit on their home background against the same classes elsewhere.
Prints Markdown tables and writes the numbers as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wsss.settings import CamsSettings
from wsss.cam.engine import CamEngine  # noqa: E402
from wsss.clip.dense import preprocess  # noqa: E402
from wsss.clip.model import load_clip  # noqa: E402
from wsss.toyclip.train import average_precision  # noqa: E402
from wsss.clip.text import encode_class_texts  # noqa: E402
from wsss.metrics.confusion import ConfusionMatrix  # noqa: E402
from wsss.toyworld import generate_toyworld  # noqa: E402
from wsss.toyworld.generate import drawn_otherwise  # noqa: E402
from wsss.toyworld.captions import read_facts  # noqa: E402


DEFAULT_ROOT = str(REPO / "data" / "raw" / "toyworld-bench")


def stale(root: Path, seed: int) -> bool:
    """Whether the benchmark's own world was drawn by another generator version or other defaults."""
    return bool(drawn_otherwise(root, seed=seed))


def load_split(root: Path, split: str, limit: int | None):
    ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    return ids[:limit] if limit else ids


@torch.no_grad()
def recognition(model, class_text: torch.Tensor, root: Path, ids: list[str], classes: list[str]) -> dict:
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    patch = model.visual.patch_size
    feats, labels = [], []
    for image_id in tqdm(ids, desc="zero-shot", unit="img", leave=False):
        image = Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB")
        size = tuple(model.visual.image_size)
        if image.size != size[::-1]:
            image = image.resize(size[::-1], Image.BICUBIC)  # encode_image needs the trained grid
        x = preprocess(image, patch, mean, std)[None]
        feats.append(torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1))
        facts, _ = read_facts(root / "Annotations" / f"{image_id}.xml")
        present = {c for c, _ in facts.objects}
        labels.append([c in present for c in classes])
    scores = (torch.cat(feats) @ class_text.T).numpy()
    labels = np.array(labels)
    ap = {c: average_precision(scores[:, k], labels[:, k]) for k, c in enumerate(classes) if labels[:, k].any()}
    ranked = [scores[i, labels[i]].min() > scores[i, ~labels[i]].max() for i in range(len(ids))
              if labels[i].any() and (~labels[i]).any()]
    return {"map": float(np.mean(list(ap.values())) * 100), "ap": {c: v * 100 for c, v in ap.items()},
            "perfect_ranking": float(np.mean(ranked) * 100), "images": len(ids)}


def iou(counts) -> float | None:
    """TP / (TP + FP + FN); None where the group has neither ground truth nor prediction."""
    tp, fp, fn = counts
    return tp / (tp + fp + fn) if tp + fp + fn else None


def segmentation(engine: CamEngine, root: Path, ids: list[str], classes: list[str], alphas: list[float],
                 caa: bool, planted: dict[str, str]) -> dict:
    sources = ["cam"] + (["refined"] if caa else [])
    cms = {(s, a): ConfusionMatrix(len(classes) + 1) for s in sources for a in alphas}
    leak = defaultdict(lambda: np.zeros(3, np.int64))  # (source, α, class, on its home background) → TP, FP, FN
    seconds = 0.0
    for image_id in tqdm(ids, desc="GradCAM", unit="img", leave=False):
        image = Image.open(root / "JPEGImages" / f"{image_id}.jpg").convert("RGB")
        gt = np.array(Image.open(root / "SegmentationClass" / f"{image_id}.png"))
        facts, _ = read_facts(root / "Annotations" / f"{image_id}.xml")
        present = sorted({classes.index(c) for c, _ in facts.objects})
        t0 = time.perf_counter()
        out = engine(image, present)
        seconds += time.perf_counter() - t0
        lut = np.array([0] + [k + 1 for k in present], np.uint8)
        valid = gt != 255
        for s in sources:
            maps = out.cam if s == "cam" else out.refined
            for a in alphas:
                bg = (1 - maps.max(0)) ** a
                pred = lut[np.concatenate([bg[None], maps]).argmax(0)]
                cms[(s, a)].update(pred, gt)
                for c, home in planted.items():
                    if c in facts.classes:
                        k = classes.index(c) + 1
                        p, g = (pred == k) & valid, (gt == k) & valid
                        leak[(s, a, c, facts.background == home)] += (p & g).sum(), (p & ~g).sum(), (~p & g).sum()
    res = {}
    for (s, a), cm in cms.items():
        r = cm.compute()
        res[f"{s}_alpha{a:g}"] = {"miou": r["miou"] * 100,
                                  "iou": {n: v * 100 for n, v in zip(["background"] + classes, r["iou"])}}
        # the leak itself: each planted class's IoU on its home background against the same class elsewhere
        home = [v for c in planted if (v := iou(leak[(s, a, c, True)])) is not None]
        away = [v for c in planted if (v := iou(leak[(s, a, c, False)])) is not None]
        res[f"{s}_alpha{a:g}"].update(planted_home_iou=float(np.mean(home)) * 100 if home else None,
                                      planted_away_iou=float(np.mean(away)) * 100 if away else None,
                                      home_iou={c: 100 * v for c in planted if (v := iou(leak[(s, a, c, True)])) is not None},
                                      away_iou={c: 100 * v for c in planted if (v := iou(leak[(s, a, c, False)])) is not None})
    res["seconds_per_image"] = seconds / max(len(ids), 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=DEFAULT_ROOT,
                    help="toy world to evaluate (the default one is regenerated when missing or stale)")
    ap.add_argument("--seed", type=int, default=0, help="seed when generating --root")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", type=int, default=None, help="at most this many images (default: the split)")
    ap.add_argument("--model", default="wsss-toy-vit")
    ap.add_argument("--pretrained", default=str(REPO / "assets" / "toyclip" / "wsss-toy-vit.pt"))
    ap.add_argument("--templates", nargs="+", default=["a photo of a {}."])
    ap.add_argument("--alphas", nargs="+", type=float, default=[1.0, 2.0])
    ap.add_argument("--caa", action="store_true", help="also score the CAA-refined maps")
    ap.add_argument("--generation", type=int, default=0, help="also time generating this many images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    report: dict = {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads}
    if args.generation:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            stats = generate_toyworld(Path(tmp) / "w", num_train=args.generation, num_val=0, seed=1, progress=False)
            report["generation"] = {"images": args.generation, "seconds": round(time.perf_counter() - t0, 2),
                                    "workers": stats["workers"]}
    root = Path(args.root)
    if not (root / "classes.txt").exists() or (args.root == DEFAULT_ROOT and stale(root, args.seed)):
        generate_toyworld(root, seed=args.seed, progress=False)
    classes = (root / "classes.txt").read_text().split()
    backgrounds = (root / "backgrounds.txt").read_text().split()
    planted = json.loads((root / "stats.json").read_text()).get("cooccurrence", {})
    ids = load_split(root, args.split, args.images)

    model, tokenizer = load_clip(args.model, args.pretrained)
    class_text = encode_class_texts(model, tokenizer, classes, args.templates)
    bg_text = encode_class_texts(model, tokenizer, backgrounds, args.templates)
    report["recognition"] = recognition(model, class_text, root, ids, classes)
    engine = CamEngine(model, class_text, bg_text, CamsSettings(refine=args.caa), "cpu")
    seg = segmentation(engine, root, ids, classes, args.alphas, args.caa, planted)
    report["segmentation"] = seg
    report.update({"root": str(root), "split": args.split, "model": args.model, "pretrained": args.pretrained,
                   "templates": args.templates, "background_words": backgrounds, "planted": planted})

    rec = report["recognition"]
    print(f"\n## Zero-shot recognition ({rec['images']} {args.split} images)\n")
    print(f"mAP **{rec['map']:.2f}%**; present classes all ranked above absent ones on "
          f"{rec['perfect_ranking']:.1f}% of the images\n")
    print("| class | AP % |\n|---|---:|")
    for c, v in rec["ap"].items():
        print(f"| {c}{' (planted on ' + planted[c] + ')' if c in planted else ''} | {v:.1f} |")
    keys = [k for k in seg if k != "seconds_per_image"]
    print(f"\n## Softmax-GradCAM segmentation, background = (1 − max)^α ({seg['seconds_per_image']:.3f} s/image)\n")
    print("| class | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for n in ["background"] + classes:
        mark = f" (planted on {planted[n]})" if n in planted else ""
        print(f"| {n}{mark} | " + " | ".join(f"{seg[k]['iou'][n]:.1f}" for k in keys) + " |")
    print("| **mIoU** | " + " | ".join(f"**{seg[k]['miou']:.1f}**" for k in keys) + " |")
    others = [c for c in classes if c not in planted]
    for k in keys:
        seg[k]["planted_mean_iou"] = float(np.mean([seg[k]["iou"][c] for c in planted])) if planted else None
        seg[k]["other_mean_iou"] = float(np.mean([seg[k]["iou"][c] for c in others]))
    print("| planted classes (mean) | " + " | ".join(f"{seg[k]['planted_mean_iou']:.1f}" for k in keys) + " |")
    print("| other classes (mean) | " + " | ".join(f"{seg[k]['other_mean_iou']:.1f}" for k in keys) + " |")
    if planted:
        print("| planted classes on their home background | "
              + " | ".join(f"{seg[k]['planted_home_iou']:.1f}" for k in keys) + " |")
        print("| planted classes elsewhere | " + " | ".join(f"{seg[k]['planted_away_iou']:.1f}" for k in keys) + " |")
    if "generation" in report:
        g = report["generation"]
        print(f"\nGeneration: {g['images']} images in {g['seconds']} s ({g['workers']} workers)")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
