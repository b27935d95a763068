"""Per-class probabilities of whole images from the configured CLIP, as the CAM stage scores them.

The CAM stage's softmax (`wsss.cam.gradcam`) sets the image's embedding (the mean of its patch tokens,
`DenseViT.encode`, at native aspect) against the class texts and the background words, scaled by CLIP's
logit scale. A whole-image score needs no CAM detail, so the image is first brought to CLIP's own input
scale (shorter side = the model's image size, 224 for ViT-B/16; aspect kept): on a CPU a 500×375 photo then
costs a third of its native-size forward (the toy world's 64-pixel images are already at scale). Here every class takes part, not only the labelled ones: probability of class k = its share
of that softmax over all C classes + the background words. The label audit (`wsss.validation.audit`)
learns per-class thresholds on these, so only their order within a class matters, not their calibration.

Images of one padded size run as one batch (GPU when present, `clip.device`); the scores of an image do
not depend on its batch.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsss.settings import ClipSettings, TextSettings

SCORES_VERSION = 2  # bump when the code changes the probabilities it computes (2: scored at CLIP's input scale)


def scorer_key(clip: ClipSettings, text: TextSettings, names: Sequence[str]) -> str:
    """Everything the probabilities depend on besides the image: model, weights, texts, classes."""
    from wsss.clip.words import background_words
    from wsss.identity import weights_id
    from wsss.shards import fingerprint

    return fingerprint({"version": SCORES_VERSION, "model": clip.model, "weights": weights_id(clip.pretrained),
                        "precision": clip.precision, "templates": list(text.templates), "synonyms": text.synonyms,
                        "background": background_words(text.background), "classes": list(names)})


class ClassScorer:
    """`scorer(images) -> [B, C]` probabilities; built once (weights and text embeddings), reused."""

    def __init__(self, clip: ClipSettings, text: TextSettings, names: Sequence[str], device: str | None = None):
        from wsss.clip.dense import DenseViT, image_mean_std
        from wsss.clip.model import load_clip
        from wsss.clip.text import encode_class_texts, fuse_synonyms
        from wsss.clip.words import background_words
        from wsss.device import pick_device

        self.device = torch.device(device or pick_device(clip.device))
        model, tokenizer = load_clip(clip.model, clip.pretrained, device=str(self.device), precision=clip.precision)
        templates = list(text.templates)
        classes = encode_class_texts(model, tokenizer, fuse_synonyms(names, text.synonyms), templates)
        background = encode_class_texts(model, tokenizer, background_words(text.background), templates)
        self.texts = torch.cat([classes, background]).float().to(self.device)
        self.num_classes = len(names)
        self.scale = float(model.logit_scale.detach().float().exp())
        self.dense = DenseViT(model.visual, attn_layers=0)
        self.mean, self.std = image_mean_std(model.visual)
        size = getattr(model.visual, "image_size", 224)
        self.input_side = int(min(size) if isinstance(size, (tuple, list)) else size)
        self.key = scorer_key(clip, text, names)

    def __call__(self, images: Sequence) -> np.ndarray:
        """PIL images (any sizes) → probabilities [B, C] (float32)."""
        from wsss.clip.dense import padded_size, preprocess

        out = np.zeros((len(images), self.num_classes), np.float32)
        images = [at_scale(im, self.input_side) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(padded_size(im.width, im.height, self.dense.patch_size), []).append(i)
        for idx in groups.values():
            pixels = torch.stack([preprocess(images[i], self.dense.patch_size, self.mean, self.std) for i in idx])
            with torch.no_grad():
                emb = self.dense.encode(pixels.to(self.device))
                probs = (self.scale * F.normalize(emb.float(), dim=-1) @ self.texts.T).softmax(dim=-1)
            out[idx] = probs[:, :self.num_classes].cpu().numpy()
        return out


def at_scale(image, side: int):
    """The image with its shorter side = `side` (aspect kept; bicubic, antialiased when shrinking)."""
    from PIL import Image

    short = min(image.width, image.height)
    if short == side:
        return image
    size = (max(1, round(image.width * side / short)), max(1, round(image.height * side / short)))
    return image.resize(size, Image.BICUBIC, reducing_gap=None)


def score_images(scorer: ClassScorer, images: Iterable, total: int, batch_size: int = 64,
                 progress: bool = True) -> np.ndarray:
    """Stream PIL images through `scorer` in batches of `batch_size`, with a progress bar; [N, C]."""
    from tqdm.auto import tqdm

    from wsss import interrupt

    out, batch = [], []
    with tqdm(total=total, desc="CLIP label audit", unit="img", disable=not progress) as bar:
        for im in images:
            batch.append(im)
            if len(batch) == batch_size:
                interrupt.check()
                out.append(scorer(batch))
                bar.update(len(batch))
                batch = []
        if batch:
            out.append(scorer(batch))
            bar.update(len(batch))
    return np.concatenate(out) if out else np.zeros((0, scorer.num_classes), np.float32)
