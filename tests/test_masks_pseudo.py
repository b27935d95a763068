"""Background score, argmax labelling, confidence filtering and single-image export."""

import numpy as np
import pytest

from wsss.cam.store import CamRecord
from wsss.errors import ConfigError
from wsss.settings import CrfSettings, MasksSettings, parse_settings
from wsss.masks.export import MaskParams, export_mask, mask_params
from wsss.masks.pseudo import argmax_labels, background_score, confidence_mask, stack_with_background


def test_background_score_formula():
    cams = np.array([[[0.0, 0.2], [0.5, 1.0]], [[0.0, 0.6], [0.1, 0.3]]], np.float32)
    np.testing.assert_allclose(background_score(cams, 1), [[1.0, 0.4], [0.5, 0.0]], atol=1e-6)
    np.testing.assert_allclose(background_score(cams, 2), [[1.0, 0.16], [0.25, 0.0]], atol=1e-6)
    assert background_score(np.zeros((0, 3, 4)), 1).tolist() == np.ones((3, 4)).tolist()
    assert (background_score(np.zeros((2, 3, 4)), 2) == 1).all()
    with pytest.raises(ValueError, match="alpha"):
        background_score(cams, 0)


def test_argmax_labels_maps_to_dataset_ids_and_ties_go_to_background():
    cams = np.zeros((2, 2, 3), np.float32)
    cams[0, 0, 0] = 0.9  # class 3 wins (bg 0.1)
    cams[1, 1, 2] = 0.8  # class 7 wins (bg 0.2)
    cams[0, 0, 1] = 0.5  # tie with bg 0.5 -> background
    mask = argmax_labels(cams, background_score(cams, 1), [3, 7])
    assert mask.dtype == np.uint8
    assert mask.tolist() == [[3, 0, 0], [0, 0, 7]]
    with pytest.raises(ValueError, match="labels"):
        argmax_labels(cams, background_score(cams, 1), [3])


def test_confidence_mask_sets_255_below_threshold():
    probs = np.array([[[0.96, 0.5, 0.02]], [[0.04, 0.5, 0.03]], [[0.0, 0.0, 0.95]]], np.float32)
    assert confidence_mask(probs, [4, 9], 0.95).tolist() == [[0, 255, 9]]
    assert confidence_mask(probs, [4, 9], 0.0).tolist() == [[0, 0, 9]]  # tie -> first (background)
    with pytest.raises(ValueError, match="background"):
        confidence_mask(probs, [4], 0.95)


def test_stack_with_background_order_and_layout():
    cams = np.random.default_rng(0).random((2, 3, 4)).astype(np.float16)
    bg = background_score(cams)
    stack = stack_with_background(cams, bg)
    assert stack.shape == (3, 3, 4) and stack.dtype == np.float32 and stack.flags.c_contiguous
    np.testing.assert_array_equal(stack[0], bg)


def _record(labels, cams):
    cams = np.asarray(cams, np.float16)
    return CamRecord(np.asarray(labels, np.int16), cams, cams)


def test_export_mask_modes():
    image = np.zeros((10, 12, 3), np.uint8)
    image[:, 6:] = 200
    cam = np.zeros((1, 10, 12), np.float32)
    cam[0, :, 4:] = 0.9  # blurry: starts 2 columns before the object edge
    record = _record([5], cam)
    plain = export_mask(image, record, crf=None)
    assert plain.tolist() == (np.where(np.arange(12) >= 4, 5, 0)[None].repeat(10, 0)).tolist()
    refined = export_mask(image, record, crf=CrfSettings(), confidence=0.5)
    assert refined.dtype == np.uint8 and set(np.unique(refined)) <= {0, 5, 255}
    strict = export_mask(image, record, crf=CrfSettings(), confidence=1.0)
    assert (strict == 255).any()  # nothing is 100 % certain after the CRF


def test_export_mask_without_labels_is_background():
    record = CamRecord(np.zeros(0, np.int16), np.zeros((0, 4, 5), np.float16), np.zeros((0, 4, 5), np.float16))
    assert (export_mask(None, record) == 0).all()
    assert export_mask(None, record).shape == (4, 5)


def test_mask_params_from_settings():
    assert mask_params(MasksSettings()) == MaskParams()
    p = mask_params(parse_settings({"masks": {"source": "cam", "alpha": 2, "crf": {"iterations": 3},
                                              "confidence": 0.9}}).masks)
    assert (p.source, p.alpha, p.crf.iterations, p.confidence) == ("cam", 2, 3, 0.9)
    assert mask_params(MasksSettings(use_crf=False, crf=CrfSettings(iterations=3))).crf is None
    with pytest.raises(ConfigError, match="masks.source: expected one of refined/cam, got 'attn'"):
        MasksSettings(source="attn")
    with pytest.raises(ConfigError, match="masks.aplha: unknown setting; did you mean masks.alpha"):
        parse_settings({"masks": {"aplha": 2}})
    with pytest.raises(ConfigError, match="confidence"):
        MasksSettings(confidence=1.5)
