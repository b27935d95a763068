"""The trained segmenter as a file, and inference with it: single-scale, or multi-scale + flip (softmax
probabilities averaged over scales and mirror images, each resized back to the image), and evaluation
over a split with ground truth (the confusion-matrix metrics of `wsss.metrics`).

`segmenter.pt` holds the architecture's name and size, the class list, the normalisation and the state
dict; it loads with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wsss.errors import ConfigError
from wsss.io import atomic_path

FORMAT = "wsss-segmenter/1"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def save_segmenter(path: str | Path, model: torch.nn.Module, arch: str, width: int, classes: list[str],
                   meta: dict | None = None, clip_model: str | None = None, head: str = "deeplabv3",
                   decoder_stride: int = 4) -> None:
    state = {"format": FORMAT, "arch": arch, "width": width, "head": head, "clip_model": clip_model,
             "decoder_stride": decoder_stride,
             "classes": list(classes),
             "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": dict(meta or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_segmenter(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on `device`, info without the weights); one-line errors for a bad file."""
    from wsss.io import load_versioned
    from wsss.seg.model import build_segmenter

    state = load_versioned(path, FORMAT, "segmenter file", "run `dvc repro train`")
    model = build_segmenter(state["arch"], len(state["classes"]) + 1, width=state["width"],
                            clip_model=state.get("clip_model"), head=state.get("head", "deeplabv3"),
                            decoder_stride=state.get("decoder_stride", 4))
    model.load_state_dict(state["state_dict"])
    info = {k: v for k, v in state.items() if k != "state_dict"}
    return model.to(device).eval(), info


def normalize(image: np.ndarray, info: dict) -> torch.Tensor:
    """H×W×3 uint8 → [3, H, W] float normalised as in training."""
    from wsss.seg.transforms import normalize as normalize_tensor

    return normalize_tensor(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), info["mean"], info["std"])


@torch.no_grad()
def predict_probs(model: torch.nn.Module, x: torch.Tensor, scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> torch.Tensor:
    """[C, H, W] class probabilities of one normalised image [3, H, W], averaged over scales (and flips)."""
    h, w = x.shape[-2:]
    device = next(model.parameters()).device
    x = x.to(device)[None]
    multiple = getattr(getattr(model, "backbone", None), "patch_size", 1)  # a ViT backbone needs whole patches
    total = None
    for s in scales:
        xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        sh, sw = xs.shape[-2:]
        xs = F.pad(xs, (0, -sw % multiple, 0, -sh % multiple))
        views = [xs, xs.flip(-1)] if flip else [xs]
        for i, v in enumerate(views):
            logits = model(v)["out"]
            if i == 1:
                logits = logits.flip(-1)
            logits = logits[..., :sh, :sw]
            p = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False).softmax(1)[0]
            total = p if total is None else total + p
    return total / (len(scales) * (2 if flip else 1))


def predict_labels(model, image: np.ndarray, info: dict, scales: Sequence[float] = (1.0,),
                   flip: bool = False) -> np.ndarray:
    """H×W uint8 label map (0 = background, 1..C) of an H×W×3 uint8 image."""
    return predict_probs(model, normalize(image, info), scales, flip).argmax(0).cpu().numpy().astype(np.uint8)


def evaluate_segmenter(model, info: dict, ds, scales: Sequence[float] = (1.0,), flip: bool = False,
                       progress: bool = True, keep: int = 0) -> tuple[dict, dict]:
    """Score the segmenter on every image of `ds` with ground truth; returns (the `wsss.metrics` summary,
    {image id: prediction} for the first `keep` images)."""
    from wsss.data.images import load_rgb_array
    from wsss.data.palette import load_mask
    from wsss.data.vocab import IGNORE
    from wsss.metrics.confusion import ConfusionMatrix
    from wsss.metrics.evaluate import _score, summarize
    from wsss.seg.data import check_pair

    if list(info["classes"]) != list(ds.vocab.names):
        raise ConfigError(f"the segmenter's classes {info['classes']} are not the dataset's {list(ds.vocab.names)}")
    cm = ConfusionMatrix(len(info["classes"]) + 1, IGNORE)
    kept = {}
    rows = ds.table[ds.table["mask"] != ""]
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc="evaluate", unit="img", disable=not progress):
        image_path, gt_path = ds.image_path(row), ds.mask_path(row)
        image, gt = load_rgb_array(image_path, exif=ds.exif), load_mask(gt_path)
        check_pair(image, gt, image_path, gt_path)
        pred = predict_labels(model, image, info, scales, flip)
        _score(cm, pred, gt, image_path, gt_path)
        if len(kept) < keep:
            kept[row["id"]] = pred
    return summarize(cm, ds.vocab, images=len(rows), scales=list(scales), flip=flip), kept
