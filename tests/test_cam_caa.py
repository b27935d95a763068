"""CAA pieces: Sinkhorn, symmetrisation, affinity, box masks (incl. the reference quirk), refinement."""

import cv2
import numpy as np
import pytest
import torch
from helpers.clip_es import one_thread  # noqa: F401  (autouse fixture for this module)
from helpers.clip_es import ref_box_mask, scale_cam_image

from wsss.cam.caa import attention_affinity, box_mask, box_masks, caa_refine, sinkhorn, symmetrize_
from wsss.cam.gradcam import minmax_normalize


def attention(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(n, n, generator=g), dim=-1)


def test_sinkhorn_three_rounds_columns_then_rows():
    w = attention()
    d = w.clone()
    for _ in range(3):
        d = d / d.sum(0, keepdim=True)
        d = d / d.sum(1, keepdim=True)
    torch.testing.assert_close(sinkhorn(w), d)
    torch.testing.assert_close(d.sum(1), torch.ones(30))
    w2 = w.clone()
    out = sinkhorn(w2, inplace=True)
    assert out.data_ptr() == w2.data_ptr()
    torch.testing.assert_close(out, d)


@pytest.mark.parametrize("tile", [7, 1024])
def test_symmetrize_in_place(tile):
    d = torch.randn(2, 30, 30)
    expected = (d + d.transpose(-1, -2)) / 2
    torch.testing.assert_close(symmetrize_(d, tile=tile), expected)


def test_attention_affinity_is_square_of_symmetrised_sinkhorn():
    w = attention()
    d = sinkhorn(w)
    a = (d + d.T) / 2
    torch.testing.assert_close(attention_affinity(w), a @ a)
    torch.testing.assert_close(attention_affinity(w, square=False), a)


def random_cam(h, w, seed):
    rng = np.random.RandomState(seed)
    cam = cv2.GaussianBlur(rng.rand(h, w).astype(np.float32), (3, 3), 0)
    return scale_cam_image([cam])[0]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("threshold", [0.4, 0.7])
def test_box_mask_equals_reference_find_contours(seed, threshold):
    cam = random_cam(9 + seed % 5, 13 + seed % 7, seed)
    expected = ref_box_mask(cam, threshold).numpy().astype(bool)
    np.testing.assert_array_equal(box_mask(cam, threshold), expected)
    np.testing.assert_array_equal(box_mask(torch.from_numpy(cam), threshold), expected)


def test_box_mask_reference_quirk_and_holes():
    cam = np.zeros((6, 8), np.float32)
    cam[1:5, 4:8] = 1.0  # a ring touching the last column, with a hole
    cam[2:4, 5:7] = 0.0
    cam[0, 0] = 0.9  # a separate region in the corner
    quirk = box_mask(cam, 0.4)
    expected = np.zeros((6, 8), bool)
    expected[1:5, 4:7] = True  # the last column is not covered (x1 = min(x + w, W - 1))
    expected[0, 0] = True
    np.testing.assert_array_equal(quirk, expected)
    np.testing.assert_array_equal(quirk, ref_box_mask(cam, 0.4).numpy().astype(bool))
    full = box_mask(cam, 0.4, reference_quirk=False)
    expected[1:5, 4:8] = True
    np.testing.assert_array_equal(full, expected)


def test_box_mask_quantisation_and_empty():
    # q = floor(255·cam): 0.4·255 → 102; t = floor(0.4·254) = 101 for max 0.999 → q=102 is foreground
    cam = np.array([[0.999, 0.4, 0.39], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(box_mask(cam, 0.4, reference_quirk=False)[0], [True, True, False])
    assert not box_mask(np.zeros((4, 4), np.float32), 0.4).any()
    assert not box_mask(np.full((4, 4), 0.003, np.float32), 0.4).any()  # q = 0 everywhere: no region
    assert box_masks(np.stack([cam, cam]), 0.4).shape == (2, 3, 3)


def naive_refine(affinity_sq, cams, boxes):
    out = []
    for cam, box in zip(cams, boxes):
        trans = affinity_sq * torch.as_tensor(box, dtype=torch.float32).view(1, -1)
        refined = torch.matmul(trans, torch.as_tensor(cam).reshape(-1, 1)).reshape(cam.shape).numpy()
        out.append(scale_cam_image([refined])[0])
    return np.stack(out)


def test_caa_refine_equals_naive_per_class_loop():
    h, w = 5, 6
    cams = np.stack([random_cam(h, w, s) for s in range(3)])
    boxes = box_masks(cams, 0.4)
    a = attention_affinity(attention(h * w), square=False)
    expected = naive_refine(a @ a, cams, boxes)
    got = caa_refine(a @ a, torch.from_numpy(cams), boxes)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    got2 = caa_refine(a, torch.from_numpy(cams), boxes, power=2)  # A·(A·x), no A² formed
    np.testing.assert_allclose(got2.numpy(), expected, atol=1e-5)


def test_minmax_normalize_is_scale_cam_image():
    maps = torch.rand(3, 4, 5) * 7 + 2
    expected = np.stack([scale_cam_image([m])[0] for m in maps.numpy()])
    np.testing.assert_allclose(minmax_normalize(maps).numpy(), expected, atol=1e-7)
