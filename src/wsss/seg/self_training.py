"""Self-training: the trained segmenter re-labels its own training images and a fresh segmenter learns
from those labels (`train.self_training` rounds; docs/method.md §5). SemPLeS and CLIP-ES stop before it.

A round's label of an image is made the way the masks stage makes a pseudo mask, with the segmenter in
the CAMs' place: its multi-scale + flip probabilities, restricted to the image's labels (background plus
the named classes, renormalised), cleaned by the dense CRF and filtered by confidence (`masks.crf`,
`masks.confidence`). No ground truth is read. Each label PNG carries the round's key, so an interrupted
round resumes where it stopped and a stale one is re-made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from wsss import interrupt
from wsss.data.vocab import IGNORE
from wsss.masks.crf import crf_refine
from wsss.masks.pseudo import confidence_mask


def relabel_image(model: torch.nn.Module, image: np.ndarray, labels, info: dict, masks_cfg,
                  scales, flip: bool = True) -> np.ndarray:
    """H×W uint8 label map (dataset ids, 255 = unsure) of one training image from the segmenter."""
    from wsss.seg.infer import normalize, predict_probs

    probs = predict_probs(model, normalize(image, info), scales, flip).float().cpu().numpy()
    stack = np.ascontiguousarray(probs[[0, *labels]])
    stack /= np.maximum(stack.sum(axis=0, keepdims=True), 1e-8)
    if masks_cfg.use_crf:
        stack = crf_refine(image, stack, masks_cfg.crf)
    return confidence_mask(stack, labels, masks_cfg.confidence or 0.0)


def relabel(model: torch.nn.Module, ds, out_dir: str | Path, key: str, info: dict, masks_cfg, scales,
            rank: int = 0, world_size: int = 1, progress: bool = True) -> dict:
    """Write `<out_dir>/<id>.png` for this rank's share of `ds` (every `world_size`-th image), skipping
    images whose label already carries `key`; returns, over this rank's share, {"relabelled": how many were
    made now, "ignored_share": the share of pixels left unsure (255)}."""
    from wsss.data.images import load_rgb_array
    from wsss.data.palette import load_mask, save_palette_png, stored_png_key

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    rows = list(ds.table.itertuples(index=False))[rank::world_size]
    done, ignored, pixels = 0, 0, 0
    for row in tqdm(rows, desc="self-training labels", unit="img", disable=not progress):
        interrupt.check()  # a stop lands between images; the labels written so far are kept
        path = out_dir / f"{row.id}.png"
        if stored_png_key(path) == key:
            mask = load_mask(path)
        else:
            image = load_rgb_array(ds.root / row.image, exif=ds.exif)
            mask = relabel_image(model, image, [int(c) for c in row.labels], info, masks_cfg, scales)
            save_palette_png(path, mask, key=key)
            done += 1
        ignored, pixels = ignored + int((mask == IGNORE).sum()), pixels + mask.size
    return {"relabelled": done, "ignored_share": ignored / pixels if pixels else 0.0}
