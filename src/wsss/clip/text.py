"""Text side (docs/method.md §1): templates, synonym fusion, background words, class embeddings, and
sharpness-based template selection (the CLIP-ES authors lost that code; this is our implementation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from wsss.errors import DataError

from wsss.clip.words import (BACKGROUND_WORDS, COCO_BACKGROUND, COCO_SYNONYMS, DEFAULT_TEMPLATE,  # noqa: F401
                              SYNONYMS, VOC_BACKGROUND, VOC_SYNONYMS)


def _imagenet_templates() -> tuple[str, ...]:
    """CLIP's 80 ImageNet templates as format strings (open_clip ships them as lambdas)."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def candidate_templates() -> tuple[str, ...]:
    """Default candidates for `select_template`: CLIP-ES's choice plus CLIP's ImageNet set."""
    return (DEFAULT_TEMPLATE,) + tuple(t for t in _imagenet_templates() if t != DEFAULT_TEMPLATE)


def fuse_synonyms(names: Sequence[str], synonyms: dict[str, str] | str | None) -> list[str]:
    """Class slot strings: `synonyms` is "voc"/"coco" (the built-in VOC/COCO lists), a {name: text} map or None."""
    table = SYNONYMS.get(synonyms, {}) if isinstance(synonyms, str) else dict(synonyms or {})
    return [table.get(n, n) for n in names]


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings [B, E] (fp32) of raw strings through the frozen text encoder."""
    device = _model_device(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[i:i + batch_size])).to(device)
            out.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    if not out:
        return torch.zeros(0, _embed_dim(model), device=device)
    return torch.cat(out)


def _embed_dim(model) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.nn.Linear):
        return proj.out_features
    if proj is not None:
        return proj.shape[1]
    return model.transformer.width


def encode_class_texts(model, tokenizer, names: Sequence[str], templates: Sequence[str] | str = DEFAULT_TEMPLATE
                       ) -> torch.Tensor:
    """t_k for each name [C, E]: per template normalised E_txt(template(name)), averaged, normalised again.

    `names` are class slot strings (synonyms already fused, e.g. "person with clothes,people,human").
    """
    templates = [templates] if isinstance(templates, str) else list(templates)
    if not templates:
        raise ValueError("at least one template is needed")
    texts = [t.format(n) for n in names for t in templates]
    emb = encode_texts(model, tokenizer, texts)
    emb = emb.view(len(names), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


# ---- sharpness-based template selection ---------------------------------------------------------------
@dataclass(frozen=True)
class TemplateScore:
    template: str
    sharpness: float  # Σ_images var(scores of true classes) / mean(...); lower is better
    images: int


def sharpness(probs: torch.Tensor, labels: Sequence[Sequence[int]]) -> float:
    """Σ over images of variance / mean of the softmax scores of each image's ground-truth classes.

    `probs` [I, C] are softmax scores over all C classes; variance is the population variance.
    """
    total = 0.0
    for p, lab in zip(probs, labels):
        s = p.detach()[list(lab)].double()
        total += float(s.var(unbiased=False) / s.mean())
    return total


def clip_image_features(model, images: Iterable[Image.Image], batch_size: int = 32,
                        progress: bool = False) -> torch.Tensor:
    """Plain CLIP image embeddings [I, E]: open_clip's eval transform (shortest side to the model's input
    size, centre crop) and `encode_image`, L2-normalised."""
    from open_clip import image_transform

    from wsss.clip.dense import image_mean_std

    mean, std = image_mean_std(model.visual)
    transform = image_transform(model.visual.image_size, is_train=False, mean=mean, std=std)
    return _batched_features(lambda x: model.encode_image(x), [transform], images, batch_size, model, progress)


def dense_image_features(model, images: Iterable[Image.Image], progress: bool = False) -> torch.Tensor:
    """Image embeddings [I, E] as CAM scoring sees them: native aspect, mean of patch tokens."""
    from wsss.clip.dense import DenseViT, image_mean_std, preprocess

    dense = DenseViT(model.visual, attn_layers=0)
    mean, std = image_mean_std(model.visual)
    device = _model_device(model)
    out = [dense.encode(preprocess(im, dense.patch_size, mean, std)[None].to(device))
           for im in tqdm(images, desc="image features", disable=not progress, unit="img")]
    return torch.cat(out) if out else torch.zeros(0, 0)


def _batched_features(encode: Callable, transforms: list, images, batch_size, model, progress) -> torch.Tensor:
    device = _model_device(model)
    out, batch = [], []

    def flush():
        with torch.no_grad():
            out.append(F.normalize(encode(torch.stack(batch).to(device)).float(), dim=-1))
        batch.clear()

    for im in tqdm(images, desc="image features", disable=not progress, unit="img"):
        x = im.convert("RGB")
        for t in transforms:
            x = t(x)
        batch.append(x)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return torch.cat(out) if out else torch.zeros(0, 0)


def select_template(model, tokenizer, images_and_labels: Iterable[tuple[Image.Image, Sequence[int]]],
                    class_names: Sequence[str], candidates: Sequence[str] | None = None,
                    image_features: str = "clip", batch_size: int = 32, progress: bool = True) -> list[TemplateScore]:
    """Rank candidate templates by prompt sharpness on labelled images, best (lowest) first.

    `images_and_labels` yields (PIL image, indices into `class_names` of the classes present); only image
    labels are used, never masks. Images with fewer than two distinct classes carry no sharpness signal
    (variance 0) and are skipped. Plain CLIP classification: softmax of exp(logit_scale)·cos over all C
    classes, image embedding from `clip_image_features` ("clip", default) or `dense_image_features` ("dense").
    Images are encoded once, streamed in batches; each template then costs one text encoding.
    """
    if image_features not in ("clip", "dense"):
        raise ValueError(f"image_features must be 'clip' or 'dense', got {image_features!r}")
    encode = clip_image_features if image_features == "clip" else dense_image_features
    candidates = list(candidates or candidate_templates())
    feats, labels, pending = [], [], []
    for image, lab in tqdm(images_and_labels, desc="image features", disable=not progress, unit="img"):
        lab = sorted(set(int(c) for c in lab))
        if any(c < 0 or c >= len(class_names) for c in lab):
            raise DataError(f"select-template: label {lab} outside the {len(class_names)} classes")
        if len(lab) < 2:
            continue
        pending.append(image)
        labels.append(lab)
        if len(pending) == batch_size:
            feats.append(encode(model, pending))
            pending = []
    if pending:
        feats.append(encode(model, pending))
    if not labels:
        raise DataError("select-template needs labelled images with at least two classes each; none found")
    feats = torch.cat(feats)
    scale = model.logit_scale.detach().exp().float()
    scores = []
    for template in tqdm(candidates, desc="templates", disable=not progress):
        text = encode_class_texts(model, tokenizer, class_names, [template])
        probs = (scale * feats.to(text.device) @ text.T).softmax(dim=-1).cpu()
        scores.append(TemplateScore(template, sharpness(probs, labels), len(labels)))
    return sorted(scores, key=lambda s: s.sharpness)
