"""The CLIP-ES reference's own pieces checked against independent definitions. The reference itself (the
paper code's structure, transcribed for open_clip) and the tiny random CLIP models the CAM tests share live
in `benchmarks/cam_reference.py`, free of pytest, so that `benchmarks/gpu_check.py` runs it on a bare GPU
machine (`helpers.clip_es` hands them to the test modules).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.clip_es import one_thread  # noqa: F401  (autouse fixture for this module)
from helpers.clip_es import ref_block, ref_box_mask, tiny_clip


# ---- the reference's own pieces checked against independent definitions ----------------------------------
def test_reference_attention_is_head_average_softmax():
    model = tiny_clip(layers=1)
    blk = model.visual.transformer.resblocks[0]
    x = torch.randn(1, 10, 64)
    with torch.no_grad():
        _, aw, z = ref_block(blk, x)
        q, k, _ = F.linear(z, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
        q = q.view(1, 10, 4, 16).transpose(1, 2)
        k = k.view(1, 10, 4, 16).transpose(1, 2)
        manual = ((q @ k.transpose(-1, -2)) / 4.0).softmax(-1).mean(1)
    torch.testing.assert_close(aw, manual, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_reference_boxes_are_connected_component_boxes(seed):
    """scoremap2bbox (findContours/boundingRect) = union of 8-connected components' boxes, clipped."""
    rng = np.random.RandomState(seed)
    cam = cv2.GaussianBlur(rng.rand(12, 17).astype(np.float32), (3, 3), 0)
    cam = (cam - cam.min()) / (cam.max() + 1e-7)
    mask = ref_box_mask(cam, 0.4).numpy().astype(bool)
    q = (cam * 255).astype(np.uint8)
    fg = (q > int(0.4 * q.max())).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    expected = np.zeros_like(mask)
    for x, y, w, h, _ in stats[1:n]:
        expected[y:min(y + h, 11), x:min(x + w, 16)] = True
    np.testing.assert_array_equal(mask, expected)
