"""Class-aware attention affinity (CAA, CLIP-ES, docs/method.md §3).

W (average head-averaged patch attention of the last 8 blocks) → Sinkhorn (columns then rows, 3 rounds)
→ symmetrise A = (D + Dᵀ)/2 → affinity A². Per class, a box mask from the thresholded grid CAM zeroes the
*source* patches outside the boxes: refined_k = A² · (B_k ⊙ CAM_k), min-max normalised.

Memory: everything runs in place on W, so a large image costs one N×N fp32 matrix. The engine never forms
A² either: A²·X = A·(A·X) for the N×K matrix X of masked CAMs, two O(N²K) products instead of one O(N³)
(same numbers up to fp32 rounding).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from wsss.cam.gradcam import minmax_normalize


def sinkhorn(w: torch.Tensor, rounds: int = 3, inplace: bool = False) -> torch.Tensor:
    """Normalise columns to sum 1, then rows; `rounds` times (over the last two dims)."""
    d = w if inplace else w.clone()
    for _ in range(rounds):
        d.div_(d.sum(dim=-2, keepdim=True))
        d.div_(d.sum(dim=-1, keepdim=True))
    return d


def symmetrize_(d: torch.Tensor, tile: int = 1024) -> torch.Tensor:
    """d ← (d + dᵀ)/2 in place, tile by tile (only a tile-sized temporary)."""
    n = d.shape[-1]
    for i in range(0, n, tile):
        for j in range(i, n, tile):
            a = d[..., i:i + tile, j:j + tile]
            b = d[..., j:j + tile, i:i + tile]
            s = (a + b.transpose(-1, -2)) / 2
            a.copy_(s)
            b.copy_(s.transpose(-1, -2))
    return d


def attention_affinity(w: torch.Tensor, rounds: int = 3, square: bool = True, inplace: bool = False
                       ) -> torch.Tensor:
    """Sinkhorn, symmetrise, and square (A², one matrix product) unless `square=False` (then A, for
    `caa_refine(..., power=2)`, which never materialises A²)."""
    a = symmetrize_(sinkhorn(w.float() if not inplace else w, rounds, inplace=inplace))
    return a @ a if square else a


def box_mask(cam_grid, threshold: float = 0.4, reference_quirk: bool = True) -> np.ndarray:
    """Union of the bounding boxes of the 8-connected regions of the thresholded grid CAM, bool [h, w].

    Exactly the reference's `scoremap2bbox`: q = uint8(255·cam) (truncation), t = int(threshold·max q),
    foreground q > t, one box per region (cv2.findContours' outer contours = 8-connected components; hole
    contours lie inside their region's box). With `reference_quirk`, a box covers columns [x, min(x+w, W−1))
    and rows [y, min(y+h, H−1)), so regions touching the last column/row do not cover it.
    """
    cam = cam_grid.detach().cpu().numpy() if isinstance(cam_grid, torch.Tensor) else np.asarray(cam_grid)
    cam = cam.astype(np.float32, copy=False)
    height, width = cam.shape
    q = (cam * np.float32(255)).astype(np.uint8)
    t = int(threshold * int(q.max()))
    fg = (q > t).astype(np.uint8)
    mask = np.zeros((height, width), dtype=bool)
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    for x, y, w, h, _area in stats[1:n]:  # label 0 is the background; a loop over regions, not pixels
        x1, y1 = x + w, y + h
        if reference_quirk:
            x1, y1 = min(x1, width - 1), min(y1, height - 1)
        mask[y:y1, x:x1] = True
    return mask


def box_masks(cam_grid, threshold: float = 0.4, reference_quirk: bool = True) -> np.ndarray:
    """`box_mask` of each map of [K, h, w] → bool [K, h, w]."""
    cams = cam_grid.detach().cpu().numpy() if isinstance(cam_grid, torch.Tensor) else np.asarray(cam_grid)
    out = np.zeros(cams.shape, dtype=bool)
    for i, cam in enumerate(cams):
        out[i] = box_mask(cam, threshold, reference_quirk)
    return out


def caa_refine(affinity: torch.Tensor, cam_grid: torch.Tensor, boxes, power: int = 1) -> torch.Tensor:
    """refined_k = affinity^power · (B_k ⊙ vec(CAM_k)), min-max normalised; [K, h, w] → [K, h, w].

    Masking the vector is the reference's column masking `(A² ⊙ B_kᵀ)·vec(CAM_k)`: column j of the affinity
    (source patch j) is multiplied by B_k[j]. Pass A² with power=1, or A with power=2.
    """
    k, h, w = cam_grid.shape
    boxes = torch.as_tensor(np.asarray(boxes), device=cam_grid.device).reshape(k, h * w)
    x = (cam_grid.reshape(k, h * w).float() * boxes).T.contiguous()  # [N, K]
    for _ in range(power):
        x = affinity @ x
    return minmax_normalize(x.T.reshape(k, h, w))
