"""The CLIP label audit on the toy world: how many swapped image labels it flags, how many correct images it
flags, and what the swapped labels would have cost the pseudo masks had the drop merged.

    PYTHONPATH=src python benchmarks/label_audit.py                        # 5 drops of 200 images, 10 % swapped
    PYTHONPATH=src python benchmarks/label_audit.py --drops 2 --no-miou    # the audit only (about a minute)

The dataset: the default toy world (400 train + 100 val, seed 0), validated as `prepare` does (its content
store: hashes, labels, the toy CLIP's per-class probabilities). Each drop: a toy world of its own seed
(--images train images), delivered without masks, where --swap of the images have one label swapped for a
class the image does not show (all objects of that class renamed). The drop is validated against the store
with the shipped settings (`validation.label_audit: warn`; clip.model / clip.pretrained / text.* of
params.yaml): the audit never reads a mask. A swapped label counts as flagged when a finding names it (the
wrong label "looks wrong", or the true one is "missing"); a correct image is flagged by any finding.

The mIoU cost (first drop only): pseudo masks of the drop's images (cams + masks with the shipped settings,
except the background set: the hand-written words, as the `teacher` stage, since learned prompts need the
`prompts` stage's output) scored against the drop's ground truth, with the true labels, with the swapped ones,
and with the swapped ones less the images the audit flagged (what `validation.label_audit: quarantine` merges;
scored on those images, beside the true labels on the same images).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from helpers.content import swap_voc_labels  # noqa: E402
from wsss.data.readers import read_dataset_source  # noqa: E402
from wsss.settings import load_settings  # noqa: E402
from wsss.toyworld import generate_toyworld  # noqa: E402
from wsss.validation import validate_dataset  # noqa: E402


def audit_drop(tmp: Path, seed: int, images: int, swap: float, settings, store) -> dict:
    root = tmp / f"drop{seed}"
    generate_toyworld(root, num_train=images, num_val=0, seed=seed, progress=False)
    weak = tmp / f"weak{seed}"  # what is delivered: images and (partly wrong) labels, no masks
    shutil.copytree(root, weak, ignore=shutil.ignore_patterns("SegmentationClass"))
    swapped = swap_voc_labels(weak, swap, seed, store.classes)
    drop = read_dataset_source(weak, format="voc")
    start = time.perf_counter()
    res = validate_dataset(drop, tmp / f"report{seed}", settings=settings, rules=settings.validation,
                           reference=store, workers=settings.validation.workers, progress=False)
    seconds = time.perf_counter() - start
    findings: dict[str, list] = {}
    for f in res.summary["label_audit"]["flagged"]:
        findings.setdefault(f["id"], []).append(f)
    caught = [i for i, (true, wrong) in swapped.items()
              if any((f["kind"] == "absent" and f["label"] == wrong) or (f["kind"] == "missing" and f["label"] == true)
                     for f in findings.get(i, []))]
    suggested = [i for i, (true, wrong) in swapped.items()
                 if any(f["kind"] == "absent" and f["label"] == wrong and f["suggestion"] == true
                        for f in findings.get(i, []))]
    correct = [i for i in drop.table["id"] if i not in swapped]
    false_flags = [i for i in correct if i in findings]
    return {"seed": seed, "images": len(drop), "swapped": len(swapped), "swapped_flagged": len(caught),
            "recall": round(len(caught) / len(swapped), 4), "suggested_true_class": len(suggested),
            "correct_flagged": len(false_flags), "false_flag_rate": round(len(false_flags) / len(correct), 4),
            "seconds": round(seconds, 1), "root": str(root), "weak": str(weak), "flagged": sorted(findings),
            "swaps": swapped}


def pseudo_miou(tmp: Path, settings, truth, labels: dict, keep=None, tag: str = "") -> float:
    """mIoU of the pseudo masks of `truth`'s images (its ground truth) made with `labels` ({id: ids})."""
    from wsss.cam.factory import build_cam_engine, cam_settings_key
    from wsss.cam.runner import compute_shard
    from wsss.masks.export import export_masks, mask_params
    from wsss.metrics.evaluate import evaluate_masks

    ds = dataclasses.replace(truth, table=truth.table.assign(labels=truth.table["id"].map(labels)))
    if keep is not None:
        ds = ds.subset(ds.table["id"].isin(keep))
    words = dataclasses.replace(settings, text=dataclasses.replace(settings.text, background_prompts="words"))
    cams, masks = tmp / "cams", tmp / f"masks{tag}"
    compute_shard(ds, cams, lambda: build_cam_engine(words, ds.vocab), cam_settings_key(words), progress=False)
    export_masks(ds, cams, masks, mask_params(settings.masks), workers=2, progress=False)
    return round(evaluate_masks(ds, masks, progress=False)["miou"] * 100, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=5)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--swap", type=float, default=0.1)
    parser.add_argument("--no-miou", action="store_true")
    parser.add_argument("--out", default="label_audit.json")
    args = parser.parse_args(argv)
    settings = load_settings(REPO / "params.yaml")
    settings = dataclasses.replace(settings, clip=dataclasses.replace(
        settings.clip, pretrained=str(REPO / settings.clip.pretrained)))
    tmp = Path(tempfile.mkdtemp(prefix="label-audit-"))
    try:
        generate_toyworld(tmp / "base", num_train=400, num_val=100, seed=0, progress=False)
        base = read_dataset_source(tmp / "base", format="voc")
        start = time.perf_counter()
        prepared = validate_dataset(base, tmp / "base-report", settings=settings, rules=settings.validation,
                                    mode="dataset", progress=False)
        store = prepared.store(base.vocab.names)
        rows = [audit_drop(tmp, seed, args.images, args.swap, settings, store) for seed in range(1, args.drops + 1)]
        out = {"dataset_images": len(base), "dataset_flagged": prepared.summary["label_audit"]["images_flagged"],
               "dataset_seconds": round(time.perf_counter() - start, 1), "drops": rows,
               "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}"}
        print("| drop seed | images | swapped | swapped flagged | correct images flagged | suggestion = true class |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['seed']} | {r['images']} | {r['swapped']} | {r['swapped_flagged']} ({r['recall']:.0%}) | "
                  f"{r['correct_flagged']} ({r['false_flag_rate']:.1%}) | {r['suggested_true_class']} |")
        total = {k: sum(r[k] for r in rows) for k in ("swapped", "swapped_flagged", "correct_flagged", "images")}
        correct = total["images"] - total["swapped"]
        print(f"| all | {total['images']} | {total['swapped']} | {total['swapped_flagged']} "
              f"({total['swapped_flagged'] / total['swapped']:.0%}) | {total['correct_flagged']} "
              f"({total['correct_flagged'] / correct:.1%}) | |")
        out["total"] = total
        if not args.no_miou:
            first = rows[0]
            truth = read_dataset_source(first["root"], format="voc")
            weak = read_dataset_source(first["weak"], format="voc")
            true_labels = dict(zip(truth.table["id"], truth.table["labels"]))
            given = dict(zip(weak.table["id"], weak.table["labels"]))
            keep = [i for i in truth.table["id"] if i not in first["flagged"]]
            miou = {"true": pseudo_miou(tmp, settings, truth, true_labels, tag="true"),
                    "swapped": pseudo_miou(tmp, settings, truth, given, tag="swapped"),
                    "kept_true": pseudo_miou(tmp, settings, truth, true_labels, keep, "kept_true"),
                    "kept_swapped": pseudo_miou(tmp, settings, truth, given, keep, "kept_swapped")}
            out["miou"] = {**miou, "kept_images": len(keep)}
            print(f"\npseudo-mask mIoU of drop {first['seed']} ({first['images']} images): true labels {miou['true']}, "
                  f"swapped {miou['swapped']} ({miou['swapped'] - miou['true']:+.1f}); the {len(keep)} images the "
                  f"audit lets through (quarantine policy): swapped {miou['kept_swapped']}, true {miou['kept_true']}")
        Path(args.out).write_text(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
