"""Build a `CamEngine` from the settings: CLIP weights, class and background texts, CAM settings.

`cam_settings_key` fingerprints everything a CAM file depends on besides its image and labels (model,
weights' content, texts, every `cams` setting that changes the maps); each CAM file stores it within its
key, so changing the model, a template or a threshold recomputes the CAMs and nothing else does.
Learned background prompts come in as arguments (`wsss.prompts.background` reads them): the prompts
learn from teacher CAMs, so `wsss.cam` never imports `wsss.prompts`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wsss.data.vocab import Vocabulary
from wsss.errors import ConfigError
from wsss.settings import ClipSettings, Settings

if TYPE_CHECKING:
    import torch

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
MAPS_VERSION = 2  # bump when the code changes the maps it computes (2: GradCAM normalised twice, as CLIP-ES)


def is_weights_path(pretrained: str) -> bool:
    """A local checkpoint file rather than an open_clip tag such as `openai`."""
    return "/" in pretrained or "\\" in pretrained or Path(pretrained).suffix.lower() in WEIGHT_SUFFIXES


def check_clip_source(clip: ClipSettings) -> None:
    """Fail before any work when `clip.pretrained` names a checkpoint file that is not there."""
    if clip.pretrained and is_weights_path(clip.pretrained) and not Path(clip.pretrained).is_file():
        raise ConfigError(f"clip.pretrained: checkpoint file {clip.pretrained} not found")


def cam_settings_key(settings: Settings, prompts: Path | None = None) -> str:
    """The fingerprint of everything a CAM file depends on besides its own image and labels. `prompts`: the
    learned-prompts file, needed unless the background set is the hand-written words."""
    from wsss.clip.words import background_words
    from wsss.identity import weights_id
    from wsss.shards import fingerprint

    clip, text = settings.clip, settings.text
    config = {
        "version": MAPS_VERSION, "model": clip.model, "weights": weights_id(clip.pretrained),
        "precision": clip.precision, "templates": list(text.templates), "synonyms": text.synonyms,
        "background": background_words(text.background), "cams": settings.cams.work_settings(),
    }
    if text.background_prompts != "words":  # the words-only key stays what it was before prompts existed
        if prompts is None:
            raise ValueError(f"text.background_prompts {text.background_prompts}: the CAM key needs the prompts file")
        config.update(background_prompts=text.background_prompts, prompts=weights_id(str(prompts)))
    return fingerprint(config)


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


def build_cam_engine(settings: Settings, vocab: Vocabulary, shard: int = 0, class_bg: torch.Tensor | None = None):
    """The engine of `text.background_prompts`: `class_bg` holds the learned prompts [C, E] unless it is `words`."""
    from wsss.cam.engine import CamEngine
    from wsss.clip.model import load_clip
    from wsss.clip.text import encode_class_texts, fuse_synonyms
    from wsss.clip.words import background_words
    from wsss.device import pick_device

    clip, text, cams = settings.clip, settings.text, settings.cams
    if (class_bg is None) != (text.background_prompts == "words"):
        raise ValueError(f"text.background_prompts {text.background_prompts} with "
                         f"{'no' if class_bg is None else 'learned'} prompts")
    device = pick_device(clip.device if cams.device in (None, "auto") else cams.device, shard)
    model, tokenizer = load_clip(clip.model, clip.pretrained, device=device, precision=clip.precision)
    templates = list(text.templates)
    class_text = encode_class_texts(model, tokenizer, fuse_synonyms(vocab.names, text.synonyms), templates)
    bg_text = encode_class_texts(model, tokenizer, background_words(text.background), templates)
    if text.background_prompts == "learned":
        bg_text = bg_text[:0]
    return CamEngine(model, class_text, bg_text, cams, device, class_bg=class_bg)
