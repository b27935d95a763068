"""An accumulated confusion matrix and the segmentation scores derived from it (docs/method.md §7).

Rows are ground truth, columns prediction, over num_classes ids (0 = background, 1..C). Pixels whose
ground truth is `ignore_index` are not counted at all. Pixels *predicted* as `ignore_index` (low-
confidence pseudo-mask pixels) are left out of the matrix too — pseudo masks are scored on the pixels
they commit to, as in CLIP-ES — but they are counted per ground-truth class in `pred_ignored`, which
gives the ignored fraction and a strict IoU that counts them as misses.

Scores are computed from the totals over all images (not averaged per image). A class that appears in
neither the ground truth nor the prediction has no IoU (NaN) and is left out of the mean; precision is
NaN for a class never predicted, recall NaN for a class absent from the ground truth.
"""

from __future__ import annotations

import numpy as np


def _nan_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id (< {num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.pred_ignored = np.zeros(num_classes, dtype=np.int64)  # per gt class: predicted ignore_index

    def update(self, pred: np.ndarray, gt: np.ndarray) -> "ConfusionMatrix":
        """Add one image (or a batch: any shape, as long as pred and gt have the same one)."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
        pred = pred.reshape(-1).astype(np.int64)
        gt = gt.reshape(-1).astype(np.int64)
        n = self.num_classes
        valid = gt != self.ignore_index
        bad_gt = valid & ((gt < 0) | (gt >= n))
        if bad_gt.any():
            raise ValueError(f"ground truth holds ids outside 0..{n - 1} and {self.ignore_index}: "
                             f"{np.unique(gt[bad_gt])[:10].tolist()}")
        pred_ign = valid & (pred == self.ignore_index)
        counted = valid & ~pred_ign
        bad_pred = counted & ((pred < 0) | (pred >= n))
        if bad_pred.any():
            raise ValueError(f"prediction holds ids outside 0..{n - 1} and {self.ignore_index}: "
                             f"{np.unique(pred[bad_pred])[:10].tolist()}")
        self.matrix += np.bincount(gt[counted] * n + pred[counted], minlength=n * n).reshape(n, n)
        self.pred_ignored += np.bincount(gt[pred_ign], minlength=n)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts (e.g. from a worker process) into this one."""
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one")
        self.matrix += other.matrix
        self.pred_ignored += other.pred_ignored
        return self

    def compute(self) -> dict:
        """Scores as plain Python: miou, iou/precision/recall (lists indexed by class id, NaN = undefined),
        pixel_accuracy, ignored_fraction (share of valid-gt pixels predicted as ignore), miou_strict
        (ignored pixels counted as misses), pixels (counted in the matrix)."""
        m = self.matrix
        tp = np.diag(m).astype(np.float64)
        gt_total = m.sum(axis=1)
        pred_total = m.sum(axis=0)
        union = gt_total + pred_total - tp
        iou = _nan_div(tp, union)
        strict = _nan_div(tp, union + self.pred_ignored)
        counted = int(m.sum())
        valid = counted + int(self.pred_ignored.sum())
        return {
            "miou": _nanmean(iou),
            "iou": iou.tolist(),
            "precision": _nan_div(tp, pred_total).tolist(),
            "recall": _nan_div(tp, gt_total).tolist(),
            "pixel_accuracy": float(tp.sum() / counted) if counted else float("nan"),
            "ignored_fraction": float(self.pred_ignored.sum() / valid) if valid else float("nan"),
            "miou_strict": _nanmean(strict),
            "iou_strict": strict.tolist(),
            "pixels": counted,
        }
