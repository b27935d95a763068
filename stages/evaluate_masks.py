"""DVC stage `evaluate_masks`: how good are the pseudo masks?

For every split with ground truth: mIoU, per-class IoU/precision/recall, confusion matrix, ignored share
(`reports/pseudo/<split>/`), plots and an example grid (`reports/pseudo/plots/`), and the ablation
CAM → + CAA → + CRF plus the background exponent α ∈ {1, 2} (`reports/pseudo/ablation.md`). The same
numbers go to DVC metrics (`reports/pseudo/metrics.json`) and to the MLflow run.
"""

from __future__ import annotations

from pathlib import Path

from stages.common import cam_split, main, stage_flow
from stages.masks import mask_params
from wsss.io import atomic_dir, write_json, write_text
from wsss.masks.export import MaskParams
from wsss.metrics.evaluate import (AblationRow, ablation, ablation_markdown, default_ablation_rows, evaluate_masks,
                                   metrics_summary, splits_with_gt, write_report)
from wsss.metrics.plots import example_grid, example_rows
from wsss.params import section


def alpha_rows(alphas: list[float]) -> list[AblationRow]:
    """CAM-only and CAA-refined labelling (argmax, no CRF) for each background exponent α."""
    return [AblationRow(f"{name} α={a:g}", MaskParams(source=source, alpha=a, crf=None))
            for source, name in (("cam", "CAM"), ("refined", "CAA")) for a in alphas]


@stage_flow("evaluate_masks", ["evaluate_masks"])
def evaluate(params: dict, run) -> dict:
    """Score the pseudo masks against ground truth; write metrics, plots, the ablation table."""
    cfg = section(params, "evaluate_masks")
    out = Path(cfg["out"])
    with atomic_dir(out) as tmp:  # a failed evaluation leaves the previous report whole
        metrics = write_reports(params, cfg, tmp)
    for split, values in metrics.items():
        run.log_metrics({f"{split}.{k}": v for k, v in values.items()})
    run.log_artifact(out, "pseudo")
    if (out / "ablation.md").exists():
        print((out / "ablation.md").read_text())
    return metrics


def write_reports(params: dict, cfg: dict, out: Path) -> dict:
    cam_dir, mask_dir = section(params, "cams")["out"], section(params, "masks")["out"]
    ds = cam_split(params)
    splits = splits_with_gt(ds)
    metrics: dict = {}
    for split in splits:
        result = evaluate_masks(ds, mask_dir, split=split)
        write_report(result, ds.vocab, out / split, plots=False)
        _plots(result, ds.vocab, out / "plots", split)
        metrics[split] = metrics_summary(result)
        print(f"{split}: mIoU {result['miou']:.4f} ({result['images']} images, "
              f"{result['ignored_fraction']:.2%} pixels ignored)")
    if splits:
        split = cfg.get("ablation_split") or splits[0]
        mp = mask_params(params)
        steps = default_ablation_rows(alpha=mp.alpha, crf=mp.crf, confidence=mp.confidence)
        table = ablation(ds, cam_dir, rows=steps + alpha_rows(cfg["alphas"]), split=split,
                         workers=cfg.get("workers") or None)
        n = len(steps)
        write_text(out / "ablation.md", "# Pseudo-mask ablation\n\n"
                   + ablation_markdown(dict(table, rows=table["rows"][:n]), ds.vocab)
                   + "\n## Background exponent α (bg = (1 − max CAM)^α, argmax, no CRF)\n\n"
                   + ablation_markdown(dict(table, rows=table["rows"][n:]), ds.vocab))
        metrics["ablation"] = {r["name"]: r["miou"] for r in table["rows"]}
        rows, ids = example_rows(ds, cam_dir, mask_dir, n=cfg["examples"])
        example_grid(rows, out / "plots" / "examples.png", row_labels=ids)
    write_json(out / "metrics.json", metrics)
    return metrics


def _plots(result: dict, vocab, plot_dir: Path, split: str) -> None:
    from wsss.metrics.plots import confusion_heatmap, per_class_iou_bar

    per_class_iou_bar(result, vocab, plot_dir / f"{split}_per_class_iou.png")
    confusion_heatmap(result, vocab, plot_dir / f"{split}_confusion.png")


if __name__ == "__main__":
    main(evaluate)
