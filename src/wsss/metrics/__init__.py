"""Evaluation (docs/method.md §7): confusion-matrix mIoU, pseudo-mask reports, plots and the ablation table."""

from wsss.metrics.confusion import ConfusionMatrix

__all__ = ["ConfusionMatrix"]
