"""From settings to a prompts file: the inputs' key, the crop embeddings (cached), training with resume,
the prompts file and its readable description. The `prompts` stage calls `learn_prompts`; nothing here
opens a ground-truth mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from wsss.cam.store import cam_path, stored_key
from wsss.errors import DataError
from wsss.settings import Settings

FEATURES_FILE = "features.pt"
CHECKPOINT_FILE = "checkpoint.pt"
SEMPLES_CLASS_TEMPLATE = "a photo of {}."  # SemPLeS's to_text (clip_utils.prompt_dict)


def training_split(settings: Settings):
    """The images the prompts learn from: split `prompts.split` of the prepared dataset (labels only)."""
    from wsss.data.manifest import read_split

    return read_split(settings.data.prepared, settings.prompts.split, "prompts.split")


def feature_key(settings: Settings, ds) -> str:
    """What the crop embeddings depend on: the CLIP, the teacher maps (their files' own keys, which must be
    current for today's images, labels and settings) and how masks are cut from them."""
    from wsss.cam.factory import cam_settings_key, teacher_settings
    from wsss.cam.runner import input_key
    from wsss.prompts.store import clip_identity
    from wsss.shards import fingerprint

    teacher = settings.prompts.teacher
    teacher_key = cam_settings_key(teacher_settings(settings))
    keys = []
    for _, row in ds.table.iterrows():
        path = cam_path(teacher, row["id"])
        key = stored_key(path)
        if key is None:
            raise DataError(f"{path}: teacher CAM missing or unreadable (run `dvc repro teacher` first)")
        if key != input_key(ds.image_path(row), row["labels"], teacher_key, ds.exif):
            raise DataError(f"{path}: teacher CAM is stale (its image, labels or settings changed; run "
                            "`dvc repro teacher` first)")
        keys.append((row["id"], key))
    cfg = settings.prompts
    return fingerprint({"clip": clip_identity(settings.clip.model, settings.clip.pretrained),
                        "precision": settings.clip.precision, "teacher": keys, "source": cfg.source,
                        "mask_threshold": cfg.mask_threshold, "image_embedding": cfg.image_embedding,
                        "amp": cfg.amp})


def prompts_key(settings: Settings, ds) -> str:
    """What the learned prompts depend on: the crops, the class texts and every training setting."""
    from wsss.shards import fingerprint

    text = settings.text
    return fingerprint({"features": feature_key(settings, ds), "templates": list(text.templates),
                        "synonyms": text.synonyms, "background": text.background, "classes": ds.vocab.names,
                        "prompts": settings.prompts.work_settings()})


def current_key(settings: Settings) -> str | None:
    """The key of the existing prompts file, None when there is none (or it is unreadable)."""
    from wsss.prompts.store import prompts_file, stored_prompts_key

    return stored_prompts_key(prompts_file(settings))


@dataclass
class LearnedPrompts:
    history: list[dict]
    described: dict
    pairs: int
    images: int
    seconds_features: float
    seconds_training: float


def cached_features(settings: Settings, ds, model, progress: bool = True):
    """Crop embeddings from `<prompts.out>/features.pt` when computed from the same inputs, else computed
    and cached (an interrupted run does not pay for them twice)."""
    import torch

    from wsss.io import atomic_path
    from wsss.prompts.train import CropFeatures, crop_features

    key = feature_key(settings, ds)
    path = Path(settings.prompts.out) / FEATURES_FILE
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("key") == key and "images" in state:
                print(f"prompts: crop embeddings of {len(state['classes'])} (image, class) pairs from {path}")
                return CropFeatures(state["background"], state["foreground"], state["classes"], key,
                                    state["images"], int(state["num_images"]))
        except Exception:
            pass  # damaged or of another version: recompute
    feats = crop_features(ds, settings.prompts.teacher, model, settings.prompts, key, progress)
    with atomic_path(path) as tmp:
        torch.save({"key": key, "background": feats.background, "foreground": feats.foreground,
                    "classes": feats.classes, "images": feats.images, "num_images": feats.num_images}, tmp)
    return feats


def epoch_features(settings: Settings, ds, model, progress: bool = True):
    """The crop embeddings training takes: computed once (`prompts.crops: native`, cached), or a function
    of the epoch that embeds that epoch's augmented crops (`augmented`, re-drawn every epoch)."""
    if settings.prompts.crops == "native":
        return cached_features(settings, ds, model, progress)
    from functools import partial

    from wsss.prompts.train import crop_features

    return partial(crop_features, ds, settings.prompts.teacher, model, settings.prompts,
                   feature_key(settings, ds), False)


def class_texts(settings: Settings, model, tokenizer, names) -> "torch.Tensor":
    """t_k of the objective: CLIP-ES's text side (`text.templates`, synonyms fused: what the CAMs score
    against) or SemPLeS's "a photo of {class name}." (`prompts.class_text: semples`, its `to_text`)."""
    from wsss.clip.text import encode_class_texts, fuse_synonyms

    if settings.prompts.class_text == "semples":
        return encode_class_texts(model, tokenizer, list(names), [SEMPLES_CLASS_TEMPLATE])
    text = settings.text
    return encode_class_texts(model, tokenizer, fuse_synonyms(names, text.synonyms), list(text.templates))


def learn_prompts(settings: Settings, on_epoch: Callable[[int, dict], None] | None = None,
                  progress: bool = True) -> LearnedPrompts:
    """Learn every class's background prompt and write `<prompts.out>/prompts.pt`."""
    import time

    import torch

    from wsss.clip.model import load_clip
    from wsss.clip.text import encode_class_texts
    from wsss.clip.words import background_words
    from wsss.device import pick_device
    from wsss.prompts.learner import PromptLearner, word_init
    from wsss.prompts.readable import describe_prompts
    from wsss.prompts.store import clip_identity, prompts_file, save_prompts
    from wsss.prompts.train import train_prompts

    cfg, clip, text = settings.prompts, settings.clip, settings.text
    ds = training_split(settings)
    key = prompts_key(settings, ds)
    device = pick_device(clip.device if cfg.device == "auto" else cfg.device)
    model, tokenizer = load_clip(clip.model, clip.pretrained, device=device, precision=clip.precision)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    feats = epoch_features(settings, ds, model, progress)
    seconds_features = time.perf_counter() - start
    names = ds.vocab.names
    class_text = class_texts(settings, model, tokenizer, names)
    words = background_words(text.background)
    init = word_init(model, tokenizer, words, len(names), cfg.length) if cfg.init == "words" else None
    learner = PromptLearner(model, tokenizer, len(names), cfg.length, cfg.template, init, cfg.seed,
                            cfg.period_quirk).to(device)
    logit_scale = float(model.logit_scale.detach().float().exp())
    start = time.perf_counter()
    history = train_prompts(learner, feats, class_text, cfg, logit_scale, Path(cfg.out) / CHECKPOINT_FILE, key,
                            on_epoch, progress)
    seconds_training = time.perf_counter() - start
    with torch.no_grad():
        embeddings = learner().float()
    word_text = encode_class_texts(model, tokenizer, words, list(text.templates))
    described = describe_prompts(model, tokenizer, learner.ctx, embeddings, names, class_text, words, word_text)
    identity = clip_identity(clip.model, clip.pretrained)
    pairs = int(sum(len(labels) for labels in ds.table["labels"]))
    save_prompts(prompts_file(settings), embeddings, learner.ctx, names, identity, cfg.template,
                 {"key": key, "history": history, "described": described, "pairs": pairs})
    return LearnedPrompts(history, described, pairs, len(ds), seconds_features, seconds_training)
