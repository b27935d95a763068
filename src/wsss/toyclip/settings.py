"""The settings of `wsss train-toy-clip`, validated like the pipeline's (`wsss.settings`); no torch here,
so the command line can show their defaults."""

from __future__ import annotations

from dataclasses import dataclass

from wsss.settings import Section, knob


@dataclass(frozen=True)
class ToyClipTraining(Section):
    """The settings of `train_toy_clip` (and the `params` of its sidecar): schedule, augmentation, loss
    weights. Validated on construction like the pipeline's settings."""

    KEY = "train-toy-clip"

    model_name: str = knob("wsss-toy-vit")
    split: str = knob("train")
    epochs: float = knob(12.5, gt=0)
    batch_size: int = knob(64, ge=2)
    lr: float = knob(1e-3, gt=0)
    weight_decay: float = knob(0.1, ge=0)
    warmup_frac: float = knob(0.05, ge=0, le=1)
    seed: int = knob(0, ge=0)
    max_images: int | None = knob(None, ge=1)
    max_steps: int | None = knob(None, ge=1)
    num_threads: int = knob(2, ge=1)
    bf16: bool = knob(True)
    p_crop: float = knob(0.5, ge=0, le=1)
    p_background: float = knob(0.4, ge=0, le=1)
    p_colour: float = knob(0.3, ge=0, le=1)
    p_partial: float = knob(0.5, ge=0, le=1)
    freeze_token_embedding: bool = knob(False)  # fixed random word vectors instead of training the used rows
    p_mosaic: float = knob(0.5, ge=0, le=1)
    value_weight: float = knob(1.0, ge=0)
    paste_fraction: float = knob(0.25, ge=0, le=0.5)  # pasted images and their sources: disjoint halves
    paste_weight: float = knob(0.5, ge=0)
    affinity_weight: float = knob(0.1, ge=0)
    affinity_images: int = knob(8, ge=1)
    affinity_tau: float = knob(0.1, gt=0)
    log_every: int = knob(25, ge=1)
