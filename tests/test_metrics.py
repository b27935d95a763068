"""ConfusionMatrix against an independent per-class set implementation and hand-computed numbers."""

import math

import numpy as np
import pytest

from wsss.metrics.confusion import ConfusionMatrix

IGN = 255


def reference_scores(preds, gts, n):
    """Independent: per class, count pixel sets with boolean logic, pooled over all images."""
    tp = np.zeros(n)
    fp = np.zeros(n)
    fn = np.zeros(n)
    ignored = 0
    valid_total = 0
    for pred, gt in zip(preds, gts):
        valid = gt != IGN
        kept = valid & (pred != IGN)
        ignored += int((valid & (pred == IGN)).sum())
        valid_total += int(valid.sum())
        for c in range(n):
            tp[c] += ((pred == c) & (gt == c) & kept).sum()
            fp[c] += ((pred == c) & (gt != c) & kept).sum()
            fn[c] += ((pred != c) & (gt == c) & kept).sum()
    iou = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else math.nan for c in range(n)]
    prec = [tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else math.nan for c in range(n)]
    rec = [tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else math.nan for c in range(n)]
    defined = [v for v in iou if not math.isnan(v)]
    return {"iou": iou, "precision": prec, "recall": rec, "miou": sum(defined) / len(defined),
            "pixel_accuracy": tp.sum() / (tp.sum() + fp.sum()), "ignored_fraction": ignored / valid_total}


def random_pair(rng, shape, n):
    gt = rng.integers(0, n, shape)
    pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, n, shape))
    gt[rng.random(shape) < 0.1] = IGN
    pred[rng.random(shape) < 0.1] = IGN
    return pred.astype(np.uint8), gt.astype(np.uint8)


def test_matches_independent_implementation():
    rng = np.random.default_rng(0)
    n = 6
    pairs = [random_pair(rng, (30, 40), n) for _ in range(3)]
    for p, g in pairs:  # make class 5 absent from both gt and pred -> NaN
        p[p == 5] = 0
        g[g == 5] = 1
    cm = ConfusionMatrix(n)
    for p, g in pairs:
        cm.update(p, g)
    got = cm.compute()
    ref = reference_scores([p for p, _ in pairs], [g for _, g in pairs], n)
    for key in ("iou", "precision", "recall"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-12, equal_nan=True)
    assert math.isnan(got["iou"][5])
    assert got["miou"] == pytest.approx(ref["miou"], rel=1e-12)  # NaN class excluded from the mean
    assert got["pixel_accuracy"] == pytest.approx(ref["pixel_accuracy"], rel=1e-12)
    assert got["ignored_fraction"] == pytest.approx(ref["ignored_fraction"], rel=1e-12)
    assert cm.matrix.dtype == np.int64


def test_hand_computed_example():
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, IGN]])
    pred = np.array([[0, 1, 1, IGN], [0, 2, 0, 1]])
    r = ConfusionMatrix(3).update(pred, gt).compute()
    # class 0: tp 2, fp 1 (gt 2 -> 0), fn 1 (gt 0 -> 1) ; class 1: tp 1, fp 1, fn 0 ; class 2: tp 1, fp 0, fn 1
    assert r["iou"] == pytest.approx([2 / 4, 1 / 2, 1 / 2])
    assert r["precision"] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert r["recall"] == pytest.approx([2 / 3, 1.0, 1 / 2])
    assert r["miou"] == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    assert r["pixels"] == 6 and r["ignored_fraction"] == pytest.approx(1 / 7)
    # strict: the ignored gt-1 pixel counts as a miss of class 1
    assert r["iou_strict"] == pytest.approx([2 / 4, 1 / 3, 1 / 2])


def test_merge_equals_one_accumulation():
    rng = np.random.default_rng(1)
    a, b = random_pair(rng, (20, 20), 4), random_pair(rng, (10, 7), 4)
    whole = ConfusionMatrix(4).update(*a).update(*b)
    merged = ConfusionMatrix(4).update(*a).merge(ConfusionMatrix(4).update(*b))
    np.testing.assert_array_equal(whole.matrix, merged.matrix)
    np.testing.assert_array_equal(whole.pred_ignored, merged.pred_ignored)
    with pytest.raises(ValueError, match="merge"):
        whole.merge(ConfusionMatrix(5))


def test_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="prediction holds ids"):
        cm.update(np.array([7]), np.array([0]))
    with pytest.raises(ValueError, match="ground truth holds ids"):
        cm.update(np.array([0]), np.array([9]))
    with pytest.raises(ValueError, match="collides"):
        ConfusionMatrix(3, ignore_index=1)


def test_empty_matrix_is_nan_not_crash():
    r = ConfusionMatrix(2).compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_accuracy"]) and r["pixels"] == 0
