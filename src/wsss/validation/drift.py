"""Drift of a drop against the dataset it joins: each class's share of the images and the image sizes, as
table-level GX expectations (severity warning) with numbers a person can act on.

A class's share warns when it differs from the dataset's by more than `validation.drift_share` *and* by more
than chance at the drop's size (a two-sided binomial test at `ALPHA` under the dataset's share): a small
drop is noisy, a large one is not. Image sizes warn when the drop's median area is more than
`validation.drift_size` times above or below the dataset's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from wsss.validation.suite import WARNING, Check

ALPHA = 1e-3
SHARE_PREFIX = "share:"


def share_bounds(reference_share: float, n: int, tolerance: float) -> tuple[float, float]:
    """The drop shares accepted: within `tolerance` of the reference, or within chance (binomial, ALPHA)."""
    from scipy.stats import binom

    lo_q, hi_q = binom.ppf(ALPHA / 2, n, reference_share), binom.isf(ALPHA / 2, n, reference_share)
    lo = min(reference_share - tolerance, lo_q / n)
    hi = max(reference_share + tolerance, hi_q / n)
    return max(0.0, round(float(lo), 4)), min(1.0, round(float(hi), 4))


def drift_checks(table: pd.DataFrame, names, ref_labels: np.ndarray, ref_sizes: np.ndarray,
                 tolerance: float, size_factor: float) -> list[Check]:
    """Add one 0/1 column per class (`share:<name>`) to `table` and return the drift checks against the
    reference's multi-hot labels [N, C] and sizes [N, 2]; none when either side has no images."""
    labelled = table["labels"].astype(str)
    n = len(table)
    if not n or not len(ref_labels):
        return []
    out = []
    ref_share = ref_labels.mean(axis=0)
    for k, name in enumerate(names, 1):
        col = f"{SHARE_PREFIX}{name}"
        table[col] = labelled.map(lambda s, k=k: float(str(k) in s.split())).astype(float)
        p = float(ref_share[k - 1])
        out.append(Check(f"drift_{name}", f"share of images with {name} as in the dataset ({p:.0%})", col,
                         "mean_between", lambda r, t: "", severity=WARNING, bounds=share_bounds(p, n, tolerance),
                         observed=lambda v, name=name, p=p: f"{name}: {v:.0%} of the drop's images, {p:.0%} of "
                                                             f"the dataset's"))
    areas = ref_sizes[:, 0].astype(np.float64) * ref_sizes[:, 1]
    areas = areas[areas > 0]
    if len(areas):
        median = float(np.median(areas))
        side = np.sqrt(median)
        out.append(Check("drift_size", f"median image area within {size_factor:g}× the dataset's ({side:.0f}² px)",
                         "pixels", "median_between", lambda r, t: "", severity=WARNING,
                         bounds=(round(median / size_factor, 1), round(median * size_factor, 1)),
                         observed=lambda v, side=side: f"image size: median area {np.sqrt(float(v)):.0f}² px in the "
                                                       f"drop, {side:.0f}² px in the dataset"))
    return out
