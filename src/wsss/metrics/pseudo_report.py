"""The report folder of stage `evaluate_masks` (`evaluate_masks.out`, rewritten whole): per split with
ground truth the scores (`tables/<split>/`), per-class IoU (`per_class.json`) and figures (`plots/`); the
headline mIoU per split (`metrics.json`, `wsss.metrics.headline`); the ablation as Markdown
(`ablation.md`) and as plot data (`ablation.json`, `wsss.metrics.pseudo_ablation`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wsss.errors import ConfigError
from wsss.settings import Settings


@dataclass
class PseudoReport:
    scores: dict[str, dict] = field(default_factory=dict)  # split → scalars (miou, miou_strict, ...)
    per_class: dict[str, dict] = field(default_factory=dict)  # split → class → IoU
    ablation: dict[str, float] = field(default_factory=dict)  # row name → mIoU


def report_dir(settings: Settings) -> Path:
    """`evaluate_masks.out`, refused when it holds another stage's output (the folder is replaced whole)."""
    from wsss.cam.store import OVERLAYS

    out = Path(settings.evaluate_masks.out)
    for other in (settings.validation.report_dir, Path(OVERLAYS).parent, settings.cams.out, settings.masks.out):
        if out.resolve() == Path(other).resolve() or out.resolve() in Path(other).resolve().parents:
            raise ConfigError(f"evaluate_masks.out: {out} would replace {other}, another stage's output "
                              "(the report folder is rewritten whole)")
    return out


def write_reports(settings: Settings, out: Path) -> PseudoReport:
    """Score, tabulate and draw into `out` (a fresh folder); returns the numbers for MLflow."""
    from wsss.cam.runner import cam_split
    from wsss.io import write_json
    from wsss.metrics.evaluate import splits_with_gt
    from wsss.metrics.headline import PSEUDO_METRICS, pseudo_headline

    ds = cam_split(settings)
    splits = splits_with_gt(ds)
    print(f"evaluate_masks: scoring the masks of {len(ds)} images on the splits with ground truth "
          f"({', '.join(splits) or 'none'}), then the ablation and plots")
    for folder in ("tables", "plots"):  # DVC outputs: present even when no split has ground truth
        (out / folder).mkdir(parents=True, exist_ok=True)
    report = PseudoReport()
    for split in splits:
        report.scores[split], report.per_class[split] = _score_split(ds, settings.masks.out, out, split)
    report.ablation = _ablation(settings, ds, splits, out)
    if splits:
        _examples(settings, ds, out)
    write_json(out / PSEUDO_METRICS, pseudo_headline(report.scores))
    write_json(out / "per_class.json", report.per_class)
    return report


def _score_split(ds, mask_dir: str, out: Path, split: str) -> tuple[dict, dict]:
    """One split's scores, table and figures; returns (scalars, per-class IoU)."""
    from wsss.metrics.evaluate import evaluate_masks, metrics_summary, write_report
    from wsss.metrics.plots import confusion_heatmap, per_class_iou_bar

    result = evaluate_masks(ds, mask_dir, split=split)
    write_report(result, ds.vocab, out / "tables" / split, plots=False)
    per_class_iou_bar(result, ds.vocab, out / "plots" / f"{split}_per_class_iou.png")
    confusion_heatmap(result, ds.vocab, out / "plots" / f"{split}_confusion.png")
    summary = metrics_summary(result)
    per_class = summary.pop("iou")
    summary.pop("split", None)
    print(f"{split}: mIoU {result['miou']:.4f} ({result['images']} images, "
          f"{result['ignored_fraction']:.2%} pixels ignored)")
    return summary, per_class


def _ablation(settings: Settings, ds, splits: list[str], out: Path) -> dict[str, float]:
    """`ablation.md` and `ablation.json` (placeholders when no split has ground truth); row → mIoU."""
    from wsss.io import write_json, write_text
    from wsss.metrics import pseudo_ablation as pa

    if not splits:
        write_text(out / "ablation.md", pa.TITLE + "No split with ground truth: nothing to score.\n")
        write_json(out / "ablation.json", pa.plot_data(None))
        return {}
    table, n_sets = pa.run_ablation(settings, ds, settings.evaluate_masks.ablation_split or splits[0])
    write_text(out / "ablation.md", pa.markdown(table, n_sets, settings.text.background_prompts, ds.vocab))
    write_json(out / "ablation.json", pa.plot_data(table))
    return {r["name"]: r["miou"] for r in table["rows"]}


def _examples(settings: Settings, ds, out: Path) -> None:
    from wsss.metrics.plots import example_grid, example_rows

    rows, ids = example_rows(ds, settings.cams.out, settings.masks.out, n=settings.evaluate_masks.examples)
    example_grid(rows, out / "plots" / "examples.png", row_labels=ids)
