"""Build a `CamEngine` from params.yaml: CLIP weights, class and background texts, CAM settings.

`cam_engine_config` is everything a CAM file depends on besides its image; the `cams` stage fingerprints
it, so changing the model, a template or a threshold recomputes the CAMs and nothing else does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from wsss.data.vocab import Vocabulary
from wsss.errors import ConfigError
from wsss.params import section

# keys of the `cams` section that change how work is scheduled, not what is computed
SCHEDULING_KEYS = {"shards", "dask_address", "out", "splits", "overlays", "device"}


def background_words(spec: Any) -> list[str]:
    """`voc` / `coco` (method.md defaults), a list of words, or a file with one word per line."""
    from wsss.clip.text import BACKGROUND_WORDS

    if isinstance(spec, (list, tuple)):
        return [str(w) for w in spec]
    if isinstance(spec, str) and spec.lower() in BACKGROUND_WORDS:
        return list(BACKGROUND_WORDS[spec.lower()])
    path = Path(str(spec))
    if not path.is_file():
        raise ConfigError(f"text.background: {spec!r} is neither voc/coco, a list of words, nor an existing file")
    words = [w.strip() for w in path.read_text().splitlines() if w.strip() and not w.startswith("#")]
    if not words:
        raise ConfigError(f"{path}: background word file is empty")
    return words


def _weights_id(pretrained: str | None) -> str:
    """A tag stays a tag; a local file is identified by its content hash."""
    if pretrained and Path(pretrained).is_file():
        return "sha256:" + hashlib.sha256(Path(pretrained).read_bytes()).hexdigest()[:16]
    return str(pretrained)


def cam_engine_config(params: dict) -> dict:
    clip, text, cams = section(params, "clip"), section(params, "text"), section(params, "cams")
    return {
        "model": clip["model"], "weights": _weights_id(clip.get("pretrained")), "precision": clip.get("precision"),
        "templates": list(text["templates"]), "synonyms": text.get("synonyms"),
        "background": background_words(text["background"]),
        "cams": {k: v for k, v in cams.items() if k not in SCHEDULING_KEYS},
    }


def pick_device(spec: str | None, shard: int = 0) -> str:
    """`auto`: GPU when present (shard i on GPU i mod count, so one worker per GPU), else CPU."""
    import torch

    if spec in (None, "auto"):
        count = torch.cuda.device_count()
        return f"cuda:{shard % count}" if count else "cpu"
    return spec


def build_cam_engine(params: dict, vocab: Vocabulary, shard: int = 0):
    from wsss.cam.engine import CamConfig, CamEngine
    from wsss.clip.model import load_clip
    from wsss.clip.text import encode_class_texts, fuse_synonyms

    clip, text, cams = section(params, "clip"), section(params, "text"), section(params, "cams")
    device = pick_device(cams.get("device", clip.get("device")), shard)
    model, tokenizer = load_clip(clip["model"], clip.get("pretrained"), device=device,
                                 precision=clip.get("precision", "fp32"))
    templates = list(text["templates"])
    class_text = encode_class_texts(model, tokenizer, fuse_synonyms(vocab.names, text.get("synonyms")), templates)
    bg_text = encode_class_texts(model, tokenizer, background_words(text["background"]), templates)
    config = CamConfig(**{k: v for k, v in cams.items() if k not in SCHEDULING_KEYS})
    return CamEngine(model, class_text, bg_text, config, device)
