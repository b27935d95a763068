"""From settings to a trained segmenter file: the inputs' key, the training pairs, the model, the
`torchrun` process group. The `train` stage calls `train_from_settings`; every rank of a `torchrun`
launch runs it (rank 0 inside the stage's Prefect flow and MLflow run, the others bare)."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Callable

from wsss.errors import DataError
from wsss.settings import Settings

SEGMENTER_FILE = "segmenter.pt"
KEY_FILE = "segmenter.json"  # beside segmenter.pt: its inputs' key, readable without torch


def training_split(settings: Settings):
    from wsss.data.manifest import read_split

    return read_split(settings.data.prepared, settings.train.split, "train.split")


def label_dir(settings: Settings) -> str | None:
    """The pseudo masks (the product's path), or None = ground truth (the upper-bound experiment only)."""
    return settings.masks.out if settings.train.target == "pseudo" else None


def _turned(ds, image: str) -> str:
    """"" for an image read as stored, else its EXIF orientation (`exif: apply` turns it): the training
    pixels changed, so must the key (a pseudo mask's key already holds its CAM's, which holds this)."""
    from wsss.data.images import bytes_orientation

    orientation = bytes_orientation((ds.root / image).read_bytes()) if ds.exif == "apply" else 1
    return "" if orientation == 1 else f":exif{orientation}"


def segmenter_key(settings: Settings, ds) -> str:
    """Every training setting plus each image's label map identity (a pseudo mask's own key, or the
    ground-truth file's content hash) and the initial weights' content."""
    from wsss.data.palette import stored_png_key
    from wsss.identity import weights_id
    from wsss.shards import fingerprint

    masks = label_dir(settings)
    labels = []
    for row in ds.table.itertuples(index=False):
        if masks is not None:
            key = stored_png_key(Path(masks) / f"{row.id}.png")
            if key is None:
                raise DataError(f"{Path(masks) / f'{row.id}.png'}: pseudo mask missing or unreadable "
                                "(run `dvc repro masks` first)")
        else:
            key = hashlib.sha1((ds.root / row.mask).read_bytes()).hexdigest() + _turned(ds, row.image)
        labels.append((row.id, key))
    cfg = settings.train
    weights = cfg.weights or (settings.clip.pretrained if cfg.arch == "clip" else None)
    return fingerprint({"train": cfg.work_settings(), "labels": labels, "classes": ds.vocab.names,
                        "weights": weights_id(weights) if weights else None,
                        "clip": settings.clip.model if cfg.arch == "clip" else None,
                        "refine": refinement_key(settings) if cfg.prompt_refine else None,
                        "self_training": self_training_key(settings) if cfg.self_training else None})


def self_training_key(settings: Settings) -> dict:
    """How a self-training round's labels are cleaned: the masks stage's CRF and confidence."""
    masks = settings.masks
    return {"use_crf": masks.use_crf, "crf": masks.crf.as_dict(), "confidence": masks.confidence}


def refinement_key(settings: Settings) -> dict:
    """What the prompt-refinement term depends on: the learned prompts (their own key), the CLIP and the
    crop embedding they were learned against."""
    from wsss.identity import weights_id
    from wsss.prompts.store import prompts_file, stored_prompts_key

    path = prompts_file(settings)
    key = stored_prompts_key(path)
    if key is None:
        raise DataError(f"{path}: learned prompts missing (train.prompt_refine needs them: run `dvc repro prompts`)")
    return {"prompts": key, "clip": [settings.clip.model, weights_id(settings.clip.pretrained)],
            "image_embedding": settings.prompts.image_embedding}


def current_key(settings: Settings) -> str | None:
    out = Path(settings.train.out)
    try:
        if (out / SEGMENTER_FILE).is_file():
            return json.loads((out / KEY_FILE).read_text()).get("key")
    except (OSError, ValueError, AttributeError):
        pass
    return None


def init_distributed() -> None:
    """Join the `torchrun` process group (gloo on CPU, NCCL on GPU) when launched with more than one process."""
    import torch
    import torch.distributed as dist

    from wsss.seg.train import World

    world = World.from_env()
    if world.size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend)


def train_from_settings(settings: Settings, on_log: Callable | None = None, on_checkpoint: Callable | None = None,
                        progress: bool = True) -> dict:
    """Train and write `<train.out>/segmenter.pt` (rank 0); returns the training statistics."""
    import torch

    from wsss.io import write_json
    from wsss.seg.data import SegmentationPairs
    from wsss.seg.infer import IMAGENET_MEAN, IMAGENET_STD, save_segmenter
    from wsss.seg.refine import prompt_refinement
    from wsss.seg.train import World, pick_device, train_segmenter
    from wsss.seg.transforms import train_transform

    cfg = settings.train
    init_distributed()
    ds = training_split(settings)
    key = segmenter_key(settings, ds)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = new_segmenter(settings, ds.vocab.num_classes)
    transform = partial(_transform, crop=cfg.crop, scale=tuple(cfg.scale), fn=train_transform)
    pairs = SegmentationPairs(ds, label_dir(settings), transform, cfg.seed)
    refine = prompt_refinement(settings, list(ds.vocab.names), IMAGENET_MEAN, IMAGENET_STD,
                               pick_device(cfg.device, World.from_env()))
    stats = train_segmenter(model, pairs, cfg, cfg.out, key, on_log, on_checkpoint, progress, refine)
    for round_ in range(1, cfg.self_training + 1):
        model, stats = self_training_round(settings, ds, model, round_, key, transform, refine, stats, on_log,
                                           progress)
    if World.from_env().main:
        save_segmenter(Path(cfg.out) / SEGMENTER_FILE, model, cfg.arch, cfg.width, list(ds.vocab.names),
                       {"key": key, "iterations": stats["iterations"], "target": cfg.target, "exif": ds.exif},
                       settings.clip.model if cfg.arch == "clip" else None, cfg.head, decoder_stride(cfg))
        write_json(Path(cfg.out) / KEY_FILE, {"key": key, "target": cfg.target, "classes": list(ds.vocab.names)})
    return {**stats, "images": len(ds)}


def self_training_round(settings: Settings, ds, teacher, round_: int, key: str, transform, refine, stats: dict,
                        on_log: Callable | None, progress: bool):
    """One round of `wsss.seg.self_training`: `teacher` re-labels the training images into
    `<train.out>/self_training/round<k>/labels` (each rank its share), then a fresh segmenter trains on
    them with its own checkpoint there. Returns (the new segmenter, the statistics summed over rounds)."""
    import torch

    from wsss.seg.data import SegmentationPairs
    from wsss.seg.infer import IMAGENET_MEAN, IMAGENET_STD
    from wsss.seg.self_training import relabel
    from wsss.seg.train import World, train_segmenter

    cfg, world = settings.train, World.from_env()
    folder = Path(cfg.out) / "self_training" / f"round{round_}"
    round_key = f"{key}:self-training-{round_}"
    made = relabel(teacher, ds, folder / "labels", round_key, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
                   settings.masks, cfg.self_training_scales, world.rank, world.size, progress and world.main)
    if world.size > 1:
        torch.distributed.barrier()
    torch.manual_seed(cfg.seed)
    student = new_segmenter(settings, ds.vocab.num_classes)
    pairs = SegmentationPairs(ds, folder / "labels", transform, cfg.seed)
    offset = round_ * cfg.iterations  # MLflow steps continue across rounds
    log = (lambda it, metrics: on_log(offset + it, metrics)) if on_log else None
    new = train_segmenter(student, pairs, cfg, folder, round_key, log, None, progress, refine)
    total = {**new, **{k: stats[k] + new[k] for k in ("iterations", "seconds", "data_seconds")}}
    return student, {**total, f"self_training_{round_}_ignored_share": made["ignored_share"]}


def new_segmenter(settings: Settings, num_classes: int):
    """The untrained segmenter the settings describe (C classes + background); `clip` takes the image
    tower of `clip.model` with `train.weights` or else `clip.pretrained`."""
    from wsss.seg.model import build_segmenter
    from wsss.seg.train import backbone_lr

    cfg = settings.train
    clip_model = settings.clip.model if cfg.arch == "clip" else None
    weights = cfg.weights or (settings.clip.pretrained if cfg.arch == "clip" else None)
    return build_segmenter(cfg.arch, num_classes + 1, weights, cfg.width, clip_model, cfg.head,
                           trainable_backbone=backbone_lr(cfg) > 0, decoder_stride=decoder_stride(cfg))


def decoder_stride(cfg) -> int:
    """`train.decoder_stride`, or the architecture's default (`default_decoder_stride`)."""
    from wsss.seg.model import default_decoder_stride

    return cfg.decoder_stride or default_decoder_stride(cfg.arch, cfg.head)


def _transform(image, mask, g, *, crop, scale, fn):
    from wsss.seg.infer import IMAGENET_MEAN, IMAGENET_STD

    return fn(image, mask, crop=crop, scale=scale, mean=IMAGENET_MEAN, std=IMAGENET_STD, g=g)
