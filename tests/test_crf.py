"""Dense CRF wrapper: input validation, marginals, and the bilateral kernel snapping a blurry map to an edge."""

import numpy as np
import pytest

from wsss.errors import ConfigError
from wsss.masks.crf import crf_refine, dense_crf
from wsss.settings import CrfSettings, parse_settings

H, W, EDGE = 30, 40, 20


def edge_image():
    """Left half black, right half white: one sharp vertical edge at column EDGE."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:, EDGE:] = 255
    return image


def blurry_probs(centre=16.0):
    """A soft 2-label map whose 0.5 crossing sits left of the real edge (as a CAM's blurry border)."""
    p = np.broadcast_to(1 / (1 + np.exp(-(np.arange(W) - centre) / 3.0)), (H, W))
    return np.stack([1 - p, p]).astype(np.float32)


def boundary(probs):
    """First column labelled 1, per row."""
    return (probs.argmax(0) == 1).argmax(1)


def test_bilateral_kernel_snaps_blurry_map_to_image_edge():
    probs = blurry_probs()
    assert set(boundary(probs)) == {17}
    q = dense_crf(edge_image(), probs)
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1, atol=1e-5)
    assert set(boundary(q)) == {EDGE}
    assert q.max(0).min() > 0.95  # confident after snapping


def test_iterations_parameter_is_used():
    image, probs = edge_image(), blurry_probs()
    q0 = dense_crf(image, probs, iterations=0)  # no message passing: just the normalised unary
    np.testing.assert_allclose(q0, probs / probs.sum(0), atol=1e-4)
    q1 = dense_crf(image, probs, iterations=1)
    q10 = crf_refine(image, probs, CrfSettings(iterations=10))
    assert not np.allclose(q1, q10, atol=1e-3)
    assert set(boundary(q10)) == {EDGE}


def test_zero_probabilities_are_clipped_not_infinite():
    probs = np.zeros((3, H, W), np.float32)
    probs[1] = 1.0
    q = dense_crf(edge_image(), probs, iterations=2)
    assert np.isfinite(q).all() and (q.argmax(0) == 1).all()


@pytest.mark.parametrize("image, error, match", [
    (edge_image().astype(np.float32), TypeError, "uint8"),
    (edge_image()[..., 0], ValueError, "H×W×3"),
    (np.zeros((H, W, 4), np.uint8), ValueError, "H×W×3"),
    (np.zeros((W, H, 3), np.uint8).transpose(1, 0, 2), ValueError, "C-contiguous"),
    (np.zeros((H + 1, W, 3), np.uint8), ValueError, "30×40"),
])
def test_bad_inputs_raise_clear_errors(image, error, match):
    with pytest.raises(error, match=match):
        dense_crf(image, blurry_probs())


def test_bad_unary_shape():
    with pytest.raises(ValueError, match="probability stack"):
        dense_crf(edge_image(), np.ones((H, W), np.float32))


def test_crf_settings():
    assert parse_settings({"masks": {"crf": None}}).masks.crf == CrfSettings()
    p = parse_settings({"masks": {"crf": {"bilateral_sxy": 50, "iterations": 5}}}).masks.crf
    assert (p.bilateral_sxy, p.iterations, p.gaussian_compat) == (50, 5, 3.0)
    with pytest.raises(ConfigError, match="masks.crf.bilateral_sx: unknown setting; did you mean masks.crf.bilateral_sxy"):
        parse_settings({"masks": {"crf": {"bilateral_sx": 50}}})
    with pytest.raises(ConfigError, match="iterations"):
        CrfSettings(iterations=-1)
    with pytest.raises(ConfigError, match="integer"):
        CrfSettings(iterations=2.5)


def test_read_only_image_is_accepted():
    image = edge_image()
    image.flags.writeable = False  # as np.asarray(PIL.Image) returns
    assert set(boundary(dense_crf(image, blurry_probs()))) == {EDGE}
