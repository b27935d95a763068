"""From CAMs to labels (docs/method.md §4): a background score, argmax labelling and confidence filtering.

All maps are K×H×W stacks in the order of the image's present labels (as `wsss.cam.store` writes them);
index 0 of a (K+1)-stack is always background. Labels come back as dataset class ids (0 = background,
255 = ignore), never as stack indices.
"""

from __future__ import annotations

import numpy as np

from wsss.data.vocab import BACKGROUND, IGNORE


def _as_stack(cams: np.ndarray) -> np.ndarray:
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3:
        raise ValueError(f"CAMs must be a K×H×W stack, got shape {cams.shape}")
    return cams


def background_score(cams: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """bg = (1 − max_k CAM_k)^α, H×W float32. Where no class fires (all CAMs 0, or K = 0) bg = 1.

    A larger α pushes the score down, so more pixels go to a class (CLIP-ES uses α = 1 before the CRF).
    """
    cams = _as_stack(cams)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if cams.shape[0] == 0:
        return np.ones(cams.shape[1:], dtype=np.float32)
    peak = np.clip(cams.max(axis=0), 0.0, 1.0)
    return np.power(1.0 - peak, alpha, dtype=np.float32)


def stack_with_background(cams: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """[bg, CAM_1..CAM_K] as a C-contiguous (K+1)×H×W float32 array."""
    cams = _as_stack(cams)
    bg = np.asarray(bg, dtype=np.float32)
    if bg.shape != cams.shape[1:]:
        raise ValueError(f"background score shape {bg.shape} does not match CAMs {cams.shape}")
    return np.ascontiguousarray(np.concatenate([bg[None], cams], axis=0))


def id_lookup(labels) -> np.ndarray:
    """Stack index → dataset class id: [0, labels...] as uint8 (ids ≤ 254 fit, see Vocabulary)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 1 or labels.max() >= IGNORE):
        raise ValueError(f"labels must be class ids 1..{IGNORE - 1}, got {labels.tolist()}")
    return np.concatenate([[BACKGROUND], labels]).astype(np.uint8)


def argmax_labels(cams: np.ndarray, bg: np.ndarray, labels) -> np.ndarray:
    """CRF-less labelling: per pixel the largest of [bg, CAMs], as dataset ids (ties go to background)."""
    cams = _as_stack(cams)
    if cams.shape[0] != len(labels):
        raise ValueError(f"{cams.shape[0]} CAMs but {len(labels)} labels")
    return id_lookup(labels)[stack_with_background(cams, bg).argmax(axis=0)]


def confidence_mask(probs: np.ndarray, labels, threshold: float = 0.95) -> np.ndarray:
    """Labels from a (K+1)×H×W probability stack (bg first); pixels whose largest probability is below
    `threshold` become 255, so the confidence-guided loss (§5) ignores them."""
    probs = _as_stack(probs)
    if probs.shape[0] != len(labels) + 1:
        raise ValueError(f"probability stack has {probs.shape[0]} maps, expected background + {len(labels)} labels")
    mask = id_lookup(labels)[probs.argmax(axis=0)]
    mask[probs.max(axis=0) < threshold] = IGNORE
    return mask
