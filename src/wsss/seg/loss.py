"""The confidence-guided loss (docs/method.md §5): cross-entropy over the pixels the pseudo mask commits
to. Pixels labelled 255 (low CRF confidence, or padding from the crop) contribute nothing: neither to the
sum nor to the count it is averaged over."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def confidence_guided_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels of [B, C, H, W] logits and [B, H, W] labels; 0 (with a
    gradient path) when every pixel is ignored, instead of NaN."""
    valid = target != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target.long(), ignore_index=IGNORE, reduction="sum") / valid.sum()
