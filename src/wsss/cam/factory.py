"""Build a `CamEngine` from the settings: CLIP weights, class and background texts, CAM settings.

`cam_settings_key` fingerprints everything a CAM file depends on besides its image and labels (model,
weights' content, texts, every `cams` setting that changes the maps); each CAM file stores it within its
key, so changing the model, a template or a threshold recomputes the CAMs and nothing else does.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from wsss.data.vocab import Vocabulary
from wsss.errors import ConfigError
from wsss.settings import ClipSettings, Settings

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
MAPS_VERSION = 2  # bump when the code changes the maps it computes (2: GradCAM normalised twice, as CLIP-ES)


def background_words(spec: Any) -> list[str]:
    """`voc` / `coco` (the built-in lists), a list of words, or a file with one word per line."""
    from wsss.clip.words import BACKGROUND_WORDS

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


def is_weights_path(pretrained: str) -> bool:
    """A local checkpoint file rather than an open_clip tag such as `openai`."""
    return "/" in pretrained or "\\" in pretrained or Path(pretrained).suffix.lower() in WEIGHT_SUFFIXES


def check_clip_source(clip: ClipSettings) -> None:
    """Fail before any work when `clip.pretrained` names a checkpoint file that is not there."""
    if clip.pretrained and is_weights_path(clip.pretrained) and not Path(clip.pretrained).is_file():
        raise ConfigError(f"clip.pretrained: checkpoint file {clip.pretrained} not found")


def weights_id(pretrained: str | None) -> str:
    """A tag stays a tag; a local file is identified by its content hash (computed once per process
    for an unchanged file: the stage's work check and its body both need it)."""
    if pretrained and Path(pretrained).is_file():
        stat = Path(pretrained).stat()
        return _file_digest(str(Path(pretrained).resolve()), stat.st_size, stat.st_mtime_ns)
    return str(pretrained)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def cam_settings_key(settings: Settings) -> str:
    """The fingerprint of everything a CAM file depends on besides its own image and labels."""
    from wsss.shards import fingerprint

    clip, text = settings.clip, settings.text
    config = {
        "version": MAPS_VERSION, "model": clip.model, "weights": weights_id(clip.pretrained),
        "precision": clip.precision, "templates": list(text.templates), "synonyms": text.synonyms,
        "background": background_words(text.background), "cams": settings.cams.work_settings(),
    }
    if text.background_prompts != "words":  # the words-only key stays what it was before prompts existed
        config.update(background_prompts=text.background_prompts, prompts=weights_id(str(prompts_file(settings))))
    return fingerprint(config)


def prompts_file(settings: Settings) -> Path:
    from wsss.prompts.store import PROMPTS_FILE

    return Path(settings.prompts.out) / PROMPTS_FILE


def teacher_settings(settings: Settings) -> Settings:
    """The settings of the teacher CAMs: the hand-written background words only, into `prompts.teacher`,
    no overlays. They are also the `words` row of the ablation and what `cams` reuses when it is set to words."""
    from dataclasses import replace

    teacher = Path(settings.prompts.teacher).resolve()
    for key, other in (("cams.out", settings.cams.out), ("prompts.out", settings.prompts.out)):
        if teacher == Path(other).resolve():
            raise ConfigError(f"prompts.teacher: {settings.prompts.teacher} is also {key}; the teacher CAMs need "
                              "their own folder")
    return replace(settings, text=replace(settings.text, background_prompts="words"),
                   cams=replace(settings.cams, out=settings.prompts.teacher, overlays=0))


def pick_device(spec: str | None, shard: int = 0) -> str:
    """`auto`: GPU when present (shard i on GPU i mod count, so one worker per GPU), else CPU."""
    import torch

    if spec in (None, "auto"):
        count = torch.cuda.device_count()
        return f"cuda:{shard % count}" if count else "cpu"
    return spec


def build_cam_engine(settings: Settings, vocab: Vocabulary, shard: int = 0):
    from wsss.cam.engine import CamEngine
    from wsss.clip.model import load_clip
    from wsss.clip.text import encode_class_texts, fuse_synonyms

    clip, text, cams = settings.clip, settings.text, settings.cams
    device = pick_device(clip.device if cams.device in (None, "auto") else cams.device, shard)
    model, tokenizer = load_clip(clip.model, clip.pretrained, device=device, precision=clip.precision)
    templates = list(text.templates)
    class_text = encode_class_texts(model, tokenizer, fuse_synonyms(vocab.names, text.synonyms), templates)
    bg_text = encode_class_texts(model, tokenizer, background_words(text.background), templates)
    class_bg = None
    if text.background_prompts != "words":
        from wsss.prompts.store import clip_identity, load_prompts

        class_bg = load_prompts(prompts_file(settings), clip_identity(clip.model, clip.pretrained), vocab.names)
        if text.background_prompts == "learned":
            bg_text = bg_text[:0]
    return CamEngine(model, class_text, bg_text, cams, device, class_bg=class_bg)
