"""The shipped toy CLIP keeps the promises the README makes for it, on a fresh toy world it never saw.

The full measurement (600 val images) is `benchmarks/toy_quality.py`; this is a smaller sample with
margins for its noise, so a retrained checkpoint that regresses fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.toy_quality import load_split, recognition, segmentation
from wsss.settings import CamsSettings
from wsss.cam.engine import CamEngine
from wsss.clip.model import load_clip
from wsss.clip.text import encode_class_texts
from wsss.toyworld import generate_toyworld

# floors under what the shipped checkpoint measures on this sample: 97.4 % mAP, GradCAM 42.4 % mIoU
# (planted classes 43.6 % on their home background vs 68.3 % elsewhere), CAA-refined 59.3 % (+16.9 points).
# The GradCAM floor is the target itself: on a CPU the sample is measured the same every time.
MAP_FLOOR, MIOU_FLOOR, CAA_GAIN_FLOOR, LEAK_FLOOR = 92.0, 40.0, 10.0, 10.0
CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "toyclip" / "wsss-toy-vit.pt"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("toyval") / "world"
    generate_toyworld(root, num_train=0, num_val=120, seed=7, workers=1, progress=False)
    classes = (root / "classes.txt").read_text().split()
    backgrounds = (root / "backgrounds.txt").read_text().split()
    model, tokenizer = load_clip("wsss-toy-vit", str(CHECKPOINT))
    class_text = encode_class_texts(model, tokenizer, classes, ["a photo of a {}."])
    bg_text = encode_class_texts(model, tokenizer, backgrounds, ["a photo of a {}."])
    ids = load_split(root, "val", None)
    rec = recognition(model, class_text, root, ids, classes)
    planted = json.loads((root / "stats.json").read_text())["cooccurrence"]
    engine = CamEngine(model, class_text, bg_text, CamsSettings(), "cpu")
    seg = segmentation(engine, root, ids, classes, [1.0], caa=True, planted=planted)
    return rec, seg


def test_zero_shot_recognition(measured):
    rec, _ = measured
    assert rec["map"] >= MAP_FLOOR, rec


def test_gradcam_localises_and_planted_classes_leak(measured):
    _, segs = measured
    seg = segs["cam_alpha1"]
    assert seg["miou"] >= MIOU_FLOOR, seg
    # the leak is measured within each planted class (home background against elsewhere): across classes,
    # shape difficulty differs more than the leak costs (the planted ring is the easiest shape to segment)
    assert seg["planted_home_iou"] < seg["planted_away_iou"] - LEAK_FLOOR, seg


def test_caa_refinement_beats_raw_cam(measured):
    _, segs = measured
    cam, refined = segs["cam_alpha1"]["miou"], segs["refined_alpha1"]["miou"]
    assert refined >= cam + CAA_GAIN_FLOOR, (cam, refined)
