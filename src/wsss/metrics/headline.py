"""The few numbers `dvc metrics show` lists (dvc.yaml `metrics:`): the pseudo masks' mIoU per split with
ground truth (`<evaluate_masks.out>/metrics.json`, keys `pseudo.<split>.miou`) and the segmenter's on
`evaluate.split`, single-scale and multi-scale + flip (`reports/metrics.json`, keys `seg.<split>.miou`,
`seg.<split>.miou_ms`). Readable at a glance and comparable across `dvc exp show`; every other score
(strict mIoU, ignored share, per class, the ablation) is in the stages' other report files and MLflow.
"""

from __future__ import annotations

from pathlib import Path

SEG_METRICS = Path("reports/metrics.json")  # the evaluate stage's, relative to the project root
PSEUDO_METRICS = "metrics.json"  # inside evaluate_masks.out


def pseudo_headline(scores: dict[str, dict]) -> dict:
    """{"pseudo": {split: {"miou"}}} from each split's scores."""
    return {"pseudo": {split: {"miou": s["miou"]} for split, s in scores.items()}}


def seg_headline(split: str, single: dict, multi: dict) -> dict:
    """{"seg": {split: {"miou": single-scale, "miou_ms": multi-scale + flip}}}."""
    return {"seg": {split: {"miou": single["miou"], "miou_ms": multi["miou"]}}}


def seg_summary(headline: dict) -> str:
    """One line for logs: `val mIoU 0.6258, multi-scale 0.6447`; `n/a` without a segmenter's numbers."""
    seg = headline.get("seg") or {}
    return "; ".join(f"{split} mIoU {_num(v.get('miou'))}, multi-scale {_num(v.get('miou_ms'))}"
                     for split, v in seg.items()) or "n/a"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
