"""Self-training's labels (`wsss.seg.self_training`): the segmenter's probabilities restricted to the image's
labels, CRF-cleaned and confidence-filtered like a pseudo mask; keyed PNGs, so a round resumes.
(Inside training, under torchrun: tests/test_seg_ddp.py.)"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsss.settings import ConfigError, MasksSettings, TrainSettings

INFO = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


class _Fixed(torch.nn.Module):
    """Logits over (background, 1, 2, 3) that depend on position only, mirror-symmetric (flips agree): the
    outer columns 0-1 and 6-7 say class 3 first and class 2 second, columns 3-4 are a background/class-1 tie,
    columns 2 and 5 say class 1."""

    def __init__(self):
        super().__init__()
        logits = torch.full((4, 8, 8), -20.0)
        outer = [0, 1, 6, 7]
        logits[3][:, outer], logits[2][:, outer] = 10.0, 5.0
        logits[0, :, 3:5] = logits[1, :, 3:5] = 0.0
        logits[1][:, [2, 5]] = 10.0
        self.logits = torch.nn.Parameter(logits[None])

    def forward(self, x):
        return {"out": F.interpolate(self.logits, size=x.shape[-2:], mode="nearest")}


def test_labels_are_the_image_classes_only_and_unsure_pixels_are_ignored():
    from wsss.seg.self_training import relabel_image

    image = np.full((8, 8, 3), 128, np.uint8)
    mask = relabel_image(_Fixed(), image, [1, 2], INFO, MasksSettings(use_crf=False, confidence=0.95), (1.0,))
    assert (mask[:, [0, 1, 6, 7]] == 2).all()  # class 3 is not named: the image's runner-up takes the pixel
    assert (mask[:, 3:5] == 255).all()  # 0.5 / 0.5: below the confidence, left to the loss to ignore
    assert (mask[:, [2, 5]] == 1).all()
    cleaned = relabel_image(_Fixed(), image, [1, 2], INFO, MasksSettings(), (1.0, 1.5))  # CRF on, two scales
    assert set(np.unique(cleaned)) <= {0, 1, 2, 255} and (cleaned[:, [0, 7]] == 2).all()


def test_a_round_resumes_and_remakes_stale_labels(tmp_path):
    from wsss.data.palette import load_mask, save_palette_png, stored_png_key
    from wsss.seg.self_training import relabel

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    ds = SimpleNamespace(root=tmp_path, exif="ignore", table=pd.DataFrame(
        {"id": [f"im{i}" for i in range(3)], "image": [f"im{i}.png" for i in range(3)], "labels": [[1, 2]] * 3}))
    cfg, out = MasksSettings(use_crf=False), tmp_path / "labels"
    first = relabel(_Fixed(), ds, out, "k1", INFO, cfg, (1.0,), progress=False)
    assert first == {"relabelled": 3, "ignored_share": pytest.approx(2 / 8)}
    assert all(stored_png_key(out / f"im{i}.png") == "k1" for i in range(3))
    save_palette_png(out / "im1.png", np.zeros((8, 8), np.uint8), key="k0")  # a stale label from other inputs
    again = relabel(_Fixed(), ds, out, "k1", INFO, cfg, (1.0,), progress=False)
    assert again == first | {"relabelled": 1} and (load_mask(out / "im1.png")[:, [2, 5]] == 1).all()
    shard = relabel(_Fixed(), ds, tmp_path / "rank1", "k1", INFO, cfg, (1.0,), rank=1, world_size=2,
                    progress=False)
    assert shard["relabelled"] == 1 and [p.name for p in (tmp_path / "rank1").iterdir()] == ["im1.png"]


def test_self_training_needs_pseudo_masks_to_relabel():
    with pytest.raises(ConfigError, match="self_training"):
        TrainSettings(self_training=1, target="ground_truth").check()
