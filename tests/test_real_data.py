"""End-to-end: the "Real data" switch (docs/real-data.md), `dvc repro` in a temporary copy of the repository.

A small VOC-format set at VOC image sizes (500×375, 375×500, 500×333 JPEGs, XML labels, palette GT,
splits train_aug + val, the 20 VOC classes with four present), a ViT-B-16-quickgelu checkpoint file with
random weights (nothing downloads), CLIP-ES's text side, SemPLeS's published prompt settings (2 epochs
instead of 60), DeepLab-V3+ ResNet-50 at crop 321 for 1 iteration with `train.weights: null` (no ImageNet
file here: random init). Checks that every stage runs, the model registers and `wsss predict` returns
full-size masks; the scores of random weights mean nothing and are not checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers.projects import commit_and_repro, copy_repo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # ~4 min on 2 free cores

VOC_ROOT = "data/raw/VOCdevkit/VOC2012"
CLIP_MODEL = "ViT-B-16-quickgelu"
# (id, (width, height), [(class, centre x, centre y, radius x, radius y) as fractions of the image])
IMAGES = {  # split → images; train_aug as `wsss data fetch voc` lays it out (masks in SegmentationClassAug)
    "train_aug": [("2007_000032", (500, 375), [("cat", .35, .55, .22, .3), ("dog", .72, .5, .18, .25)]),
                  ("2007_000039", (375, 500), [("person", .5, .45, .25, .35)]),
                  ("2007_000063", (500, 333), [("car", .5, .6, .35, .25), ("person", .85, .4, .1, .3)])],
    "val": [("2007_000129", (375, 500), [("cat", .5, .5, .3, .25)])],
}  # few images (each costs seconds per CLIP pass on a CPU core), each of VOC's three common sizes
VOC_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
             "tvmonitor")
STAGES = ("toyworld", "prepare", "teacher", "prompts", "cams", "masks", "evaluate_masks", "train", "evaluate")


def _voc_image(seed: int, size, objects) -> tuple[np.ndarray, np.ndarray]:
    """A textured background (stripes + noise) with filled ellipses; GT: class ids, a 255 outline as VOC."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, freq = rng.uniform(0, np.pi), rng.uniform(0.03, 0.12)
    stripes = np.sin(freq * (x * np.cos(angle) + y * np.sin(angle)))[..., None]
    base = rng.uniform(60, 190, 3)
    img = base + 40 * stripes + rng.normal(0, 12, (h, w, 3))
    gt = np.zeros((h, w), np.uint8)
    for name, cx, cy, rx, ry in objects:
        r = np.hypot((x / w - cx) / rx, (y / h - cy) / ry)
        inside = r <= 1
        colour = rng.uniform(0, 255, 3)
        img[inside] = colour + 25 * np.sin(0.3 * x[inside])[:, None] + rng.normal(0, 8, (int(inside.sum()), 3))
        gt[inside] = VOC_NAMES.index(name) + 1
        gt[np.abs(r - 1) < 0.03] = 255
    return img.clip(0, 255).astype(np.uint8), gt


def make_voc_set(root: Path) -> Path:
    """JPEGImages, Annotations (object names + size), VOC-palette masks (SegmentationClassAug for train_aug,
    SegmentationClass for val), ImageSets/Segmentation/<split>.txt."""
    from wsss.data.palette import palette_image

    for d in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    seed = 0
    for split, images in IMAGES.items():
        for id_, (w, h), objects in images:
            img, gt = _voc_image(seed := seed + 1, (w, h), objects)
            Image.fromarray(img, "RGB").save(root / "JPEGImages" / f"{id_}.jpg", quality=90)
            palette_image(gt).save(root / ("SegmentationClassAug" if split == "train_aug" else "SegmentationClass")
                                   / f"{id_}.png")
            objs = "".join(f"<object><name>{o[0]}</name><difficult>0</difficult></object>" for o in objects)
            (root / "Annotations" / f"{id_}.xml").write_text(
                f"<annotation><filename>{id_}.jpg</filename><size><width>{w}</width><height>{h}</height>"
                f"<depth>3</depth></size>{objs}</annotation>")
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i, _, _ in images))
    return root


@pytest.fixture(scope="session")
def random_vit_b16(tmp_path_factory) -> Path:
    """A ViT-B-16-quickgelu open_clip state dict with random weights, stored in fp16 (~300 MB)."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model(CLIP_MODEL, pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "ViT-B-16-random.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, path)
    return path


def real_data_params(params: dict, checkpoint: Path) -> dict:
    """The "Real data" switch of docs/real-data.md (VOC train_aug, ViT-B-16, CLIP-ES text side, SemPLeS
    prompts, DeepLab-V3+ ResNet-50 at crop 321), shrunk only in epochs, iterations, the ablation (val, one
    α) and report sizes."""
    switch = {
        "toyworld": {"num_train": 2, "num_val": 1, "image_size": 32},  # still a stage; unused
        "data": {"root": VOC_ROOT, "format": "voc", "splits": ["train_aug", "val"]},
        "clip": {"model": CLIP_MODEL, "pretrained": str(checkpoint)},
        "text": {"templates": ["a clean origami {}."], "synonyms": "voc", "background": "voc",
                 "background_prompts": "learned"},
        "prompts": {"length": 30, "init": "uniform", "mask_threshold": None, "period_quirk": True,
                    "image_embedding": "cls", "class_text": "semples", "crops": "augmented", "class_push": 0.02,
                    "foreground_repel": 0.0, "softmax_match": 0.0, "epochs": 2, "batch_size": 128,
                    "batch_unit": "images", "lr": 0.025, "lr_schedule": "cosine", "weight_decay": 0.03,
                    "split": "train_aug"},
        "cams": {"box_threshold": 0.4, "splits": ["train_aug", "val"], "overlays": 2},
        "evaluate_masks": {"examples": 2, "alphas": [1], "ablation_split": "val"},
        "train": {"arch": "resnet50", "weights": None, "split": "train_aug", "crop": 321, "batch_size": 2,
                  "iterations": 1, "checkpoint_every": 1, "log_every": 1, "workers": 0,
                  "self_training": 0},
        "evaluate": {"scales": [1.0], "flip": False, "examples": 2},
    }
    for section, values in switch.items():
        params[section].update(values)
    return params


@pytest.fixture(scope="module")
def repro(tmp_path_factory, random_vit_b16, prefect_harness):
    """The switch's `dvc repro`; its stages share the worker's Prefect API (test_pipeline covers the stages
    that boot their own), so none spends seconds starting one."""
    from prefect.settings import PREFECT_API_URL

    work = tmp_path_factory.mktemp("repo")
    copy_repo(work)
    make_voc_set(work / VOC_ROOT)
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(real_data_params(yaml.safe_load(params_file.read_text()), random_vit_b16),
                                          sort_keys=False))
    env, _ = commit_and_repro(work, PREFECT_API_URL=PREFECT_API_URL.value())
    return work, env


def _sizes() -> dict[str, tuple[int, int]]:
    return {id_: size for images in IMAGES.values() for id_, size, _ in images}


def test_every_stage_ran(repro):
    work, _ = repro
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert set(STAGES) <= set(lock["stages"]), sorted(lock["stages"])
    meta = json.loads((work / "data/prepared/dataset.json").read_text())
    assert meta["splits"] == {split: len(images) for split, images in IMAGES.items()}
    assert json.loads((work / "data/prepared/classes.json").read_text())["classes"] == list(VOC_NAMES)
    for out in ("reports/prompts/prompts.md", "reports/cams/overlays.png", "reports/pseudo/ablation.md",
                "reports/metrics.json", "data/train/segmenter.pt", "data/train/checkpoint.pt"):
        assert (work / out).is_file(), out


def test_prompts_for_20_classes_with_30_tokens(repro):
    work, _ = repro
    import torch

    state = torch.load(work / "data/prompts/prompts.pt", weights_only=True)
    assert len(state["classes"]) == 20 and state["classes"][0] == "aeroplane"
    assert state["ctx"].shape[:2] == (20, 30) and state["embeddings"].shape == (20, 512)
    assert state["clip"]["model"] == CLIP_MODEL and torch.isfinite(state["embeddings"]).all()
    # SemPLeS's loop: augmented crops re-drawn every epoch (nothing cached), steps of images
    assert len(state["meta"]["history"]) == 2 and not (work / "data/prompts/features.pt").exists()


def test_cams_and_masks_at_original_size(repro):
    work, _ = repro
    from wsss.cam.store import load_cam

    for id_, (w, h) in _sizes().items():
        for cam_dir in ("data/cams", "data/cams_words"):
            record = load_cam(work / cam_dir / f"{id_}.npz")
            assert record.cam.shape[1:] == (h, w) and record.refined.shape[1:] == (h, w), (cam_dir, id_)
        mask = Image.open(work / "data/masks" / f"{id_}.png")
        assert mask.mode == "P" and mask.size == (w, h), id_
        values = set(np.unique(np.asarray(mask)).tolist())
        assert values <= set(range(21)) | {255}, (id_, values)


def test_segmenter_registered_and_predicts_full_size(repro, tmp_path):
    work, env = repro
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("wsss-segmenter", "champion")
    assert str(champion.version) == "1"
    image = work / VOC_ROOT / "JPEGImages/2007_000039.jpg"  # 375×500 (portrait)
    out = tmp_path / "predictions"
    proc = subprocess.run([sys.executable, "-m", "wsss.cli", "predict", str(image), "--out", str(out)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mask = Image.open(out / "2007_000039.png")
    assert mask.size == (375, 500) and mask.mode == "P"
    assert set(np.unique(np.asarray(mask)).tolist()) <= set(range(21))
