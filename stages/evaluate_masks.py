"""DVC stage `evaluate_masks`: how good are the pseudo masks?

For every split with ground truth: the headline mIoU (`reports/pseudo/metrics.json`, DVC metrics,
git-tracked so `dvc exp show` compares experiments), per-class IoU (`per_class.json`), per-split tables
(`tables/<split>/`: every scalar, per-class CSV for `dvc plots`, confusion matrix), the ablation CAM →
+ CAA → + CRF per background set plus the background exponent α (`ablation.md`, `ablation.json` for
`dvc plots`), and figures (`plots/`, DVC-cached). The same numbers go to the MLflow run. The code is
the library's (`wsss.metrics.pseudo_report`).
"""

from __future__ import annotations

from stages.common import main, stage


@stage("evaluate_masks", ["clip", "text", "cams", "prompts", "evaluate_masks"],
       imports=("wsss.metrics.pseudo_report", "wsss.metrics.pseudo_ablation", "wsss.metrics.plots", "torch",
                "wsss.cam.engine", "wsss.clip.model"))
def evaluate(settings, run) -> dict:
    """Score the pseudo masks against ground truth; write metrics, plots, the ablation table."""
    from wsss.io import atomic_dir
    from wsss.metrics.pseudo_report import report_dir, write_reports

    out = report_dir(settings)
    with atomic_dir(out) as tmp:  # a failed evaluation leaves the previous report whole
        report = write_reports(settings, tmp)
    for split, values in report.scores.items():
        run.log_metrics({f"{split}.{k}": v for k, v in values.items()})
    run.log_metrics({f"ablation.{name}": v for name, v in report.ablation.items()})
    run.log_metrics({f"{split}.iou.{c}": v for split, ious in report.per_class.items() for c, v in ious.items()})
    run.log_artifact(out, "pseudo")
    if (out / "ablation.md").exists():
        print((out / "ablation.md").read_text())
    return report.scores


if __name__ == "__main__":
    main(evaluate)
