"""DVC stage `evaluate_masks`: how good are the pseudo masks?

For every split with ground truth: mIoU and the other scalars (`reports/pseudo/metrics.json`, DVC
metrics, git-tracked so `dvc exp show` compares experiments), per-class IoU (`per_class.json`), per-split
tables (`tables/<split>/`: per-class CSV for `dvc plots`, confusion matrix), the ablation CAM → + CAA →
+ CRF plus the background exponent α (`ablation.md`), and figures (`plots/`, DVC-cached). The same
numbers go to the MLflow run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from stages.common import cam_split, main, stage


def alpha_rows(alphas):
    """CAM-only and CAA-refined labelling (argmax, no CRF) for each background exponent α."""
    from wsss.masks.export import MaskParams
    from wsss.metrics.evaluate import AblationRow

    return [AblationRow(f"{name} α={a:g}", MaskParams(source=source, alpha=a, crf=None))
            for source, name in (("cam", "CAM"), ("refined", "CAA")) for a in alphas]


VARIANTS = ("words", "learned", "both")


def variant_cam_dirs(settings, ds, scratch: Path) -> dict[str, str]:
    """The CAM folder of each background set (`text.background_prompts`): `words` is the teacher's, the
    configured set is `cams.out`, and the others are computed here for the ablation split only, into
    `scratch` (not kept). A set needing learned prompts is left out when there are none."""
    from wsss.cam.factory import build_cam_engine, cam_settings_key, prompts_file
    from wsss.cam.runner import compute_shard

    dirs = {"words": settings.prompts.teacher, settings.text.background_prompts: settings.cams.out}
    for variant in VARIANTS:
        if variant in dirs or not prompts_file(settings).is_file():
            continue
        s = replace(settings, text=replace(settings.text, background_prompts=variant),
                    cams=replace(settings.cams, out=str(scratch / variant)))
        compute_shard(ds, s.cams.out, lambda: build_cam_engine(s, ds.vocab), cam_settings_key(s))
        dirs[variant] = s.cams.out
    return {v: dirs[v] for v in VARIANTS if v in dirs}


def variant_rows(dirs: dict[str, str], mp, configured: str, mask_dir: str):
    """CAM → + CAA → + CRF for each background set; the configured set's CRF row reads the exported masks."""
    from wsss.metrics.evaluate import AblationRow, default_ablation_rows

    rows = []
    for variant, cam_dir in dirs.items():
        for step in default_ablation_rows(alpha=mp.alpha, crf=mp.crf, confidence=mp.confidence):
            exported = variant == configured and step.params == mp
            rows.append(AblationRow(f"{variant}: {step.name.lstrip('+ ')}", step.params, cam_dir,
                                    mask_dir if exported else None))
    return rows


@stage("evaluate_masks", ["clip", "text", "cams", "prompts", "evaluate_masks"],
       imports=("wsss.metrics.evaluate", "wsss.metrics.plots", "torch", "wsss.cam.engine", "wsss.clip.model"))
def evaluate(settings, run) -> dict:
    """Score the pseudo masks against ground truth; write metrics, plots, the ablation table."""
    from stages.cams import OVERLAYS
    from wsss.errors import ConfigError
    from wsss.io import atomic_dir

    out = Path(settings.evaluate_masks.out)
    for other in (settings.validation.report_dir, Path(OVERLAYS).parent, settings.cams.out, settings.masks.out):
        if out.resolve() == Path(other).resolve() or out.resolve() in Path(other).resolve().parents:
            raise ConfigError(f"evaluate_masks.out: {out} would replace {other}, another stage's output "
                              "(the report folder is rewritten whole)")
    with atomic_dir(out) as tmp:  # a failed evaluation leaves the previous report whole
        metrics, per_class = write_reports(settings, tmp)
    for split, values in metrics.items():
        run.log_metrics({f"{split}.{k}": v for k, v in values.items()})
    run.log_metrics({f"{split}.iou.{c}": v for split, ious in per_class.items() for c, v in ious.items()})
    run.log_artifact(out, "pseudo")
    if (out / "ablation.md").exists():
        print((out / "ablation.md").read_text())
    return metrics


def write_reports(settings, out: Path) -> tuple[dict, dict]:
    from wsss.io import write_json, write_text
    from wsss.masks.export import mask_params
    from wsss.metrics.evaluate import (ablation, ablation_markdown, evaluate_masks, metrics_summary,
                                       splits_with_gt, write_report)
    from wsss.metrics.plots import example_grid, example_rows

    cfg, cam_dir, mask_dir = settings.evaluate_masks, settings.cams.out, settings.masks.out
    ds = cam_split(settings)
    splits = splits_with_gt(ds)
    print(f"evaluate_masks: scoring the masks of {len(ds)} images on the splits with ground truth "
          f"({', '.join(splits) or 'none'}), then the ablation and plots")
    metrics: dict = {}
    per_class: dict = {}
    for folder in ("tables", "plots"):  # DVC outputs: present even when no split has ground truth
        (out / folder).mkdir(parents=True, exist_ok=True)
    write_text(out / "ablation.md", "# Pseudo-mask ablation\n\nNo split with ground truth: nothing to score.\n")
    for split in splits:
        result = evaluate_masks(ds, mask_dir, split=split)
        write_report(result, ds.vocab, out / "tables" / split, plots=False)
        _plots(result, ds.vocab, out / "plots", split)
        summary = metrics_summary(result)
        per_class[split] = summary.pop("iou")
        summary.pop("split", None)
        metrics[split] = summary
        print(f"{split}: mIoU {result['miou']:.4f} ({result['images']} images, "
              f"{result['ignored_fraction']:.2%} pixels ignored)")
    if splits:
        import tempfile

        split = cfg.ablation_split or splits[0]
        mp = mask_params(settings.masks)
        configured = settings.text.background_prompts
        with tempfile.TemporaryDirectory(prefix="wsss-ablation-") as scratch:
            dirs = variant_cam_dirs(settings, ds.split(split), Path(scratch))
            background_sets = variant_rows(dirs, mp, configured, mask_dir)
            table = ablation(ds, cam_dir, rows=background_sets + alpha_rows(cfg.alphas), split=split,
                             workers=cfg.workers or None)
        rows = table["rows"]
        n = len(background_sets)
        steps = [r for r in rows[:n] if r["name"].startswith(f"{configured}: ")]
        write_text(out / "ablation.md", "# Pseudo-mask ablation\n\n"
                   + f"Background set `{configured}` (text.background_prompts), as exported by the masks stage.\n\n"
                   + ablation_markdown(dict(table, rows=steps), ds.vocab)
                   + "\n## Background set of the softmax: hand-written words, learned prompts, both\n\n"
                   + ablation_markdown(dict(table, rows=rows[:n]), ds.vocab)
                   + "\n## Background exponent α (bg = (1 − max CAM)^α, argmax, no CRF)\n\n"
                   + ablation_markdown(dict(table, rows=rows[n:]), ds.vocab))
        metrics["ablation"] = {r["name"]: r["miou"] for r in rows}
        rows, ids = example_rows(ds, cam_dir, mask_dir, n=cfg.examples)
        example_grid(rows, out / "plots" / "examples.png", row_labels=ids)
    write_json(out / "metrics.json", metrics)
    write_json(out / "per_class.json", per_class)
    return metrics, per_class


def _plots(result: dict, vocab, plot_dir: Path, split: str) -> None:
    from wsss.metrics.plots import confusion_heatmap, per_class_iou_bar

    per_class_iou_bar(result, vocab, plot_dir / f"{split}_per_class_iou.png")
    confusion_heatmap(result, vocab, plot_dir / f"{split}_confusion.png")


if __name__ == "__main__":
    main(evaluate)
