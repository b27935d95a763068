"""The CAMs' background set from the settings (`text.background_prompts`): the hand-written words alone
(`wsss.cam.factory` as is), or with this package's learned prompts file. The one place that hands learned
prompts to the CAM code: the prompts learn from teacher CAMs, so `wsss.cam` never imports `wsss.prompts`."""

from __future__ import annotations

from pathlib import Path

from wsss.data.vocab import Vocabulary
from wsss.settings import Settings


def learned_prompts_file(settings: Settings) -> Path | None:
    """The prompts file the background set reads; None for the hand-written words alone."""
    from wsss.prompts.store import prompts_file

    return None if settings.text.background_prompts == "words" else prompts_file(settings)


def cam_key(settings: Settings) -> str:
    """`cam_settings_key` of these settings, with their prompts file when the background set needs it."""
    from wsss.cam.factory import cam_settings_key

    return cam_settings_key(settings, learned_prompts_file(settings))


def cam_engine(settings: Settings, vocab: Vocabulary, shard: int = 0):
    """`build_cam_engine` of these settings, with the learned prompts checked against the CLIP and the classes."""
    from wsss.cam.factory import build_cam_engine
    from wsss.prompts.store import clip_identity, load_prompts

    path = learned_prompts_file(settings)
    clip = settings.clip
    class_bg = None if path is None else load_prompts(path, clip_identity(clip.model, clip.pretrained), vocab.names)
    return build_cam_engine(settings, vocab, shard, class_bg)
