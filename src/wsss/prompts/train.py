"""Learn per-class background prompts from CLIP-ES teacher maps (docs/method.md §6).

Both CLIP encoders are frozen and the teacher maps are fixed, so every crop's image embedding is computed
once: for each training image and each class it carries, M = the class's teacher map (image labels
only, never ground truth), X_b = (1 − M) ⊙ X and X_f = M ⊙ X on the normalised pixels, embedded with
CLIP's class token (`prompts.image_embedding: cls`, SemPLeS) or the mean of its patch tokens
(`patch_mean`, the read-out CAM scoring uses). Training then only runs the text tower:
each step encodes the C prompts and scores a batch of (crop, class) pairs with `prompt_loss`. One
checkpoint per epoch (prompt tokens, AdamW state, loss history); a rerun with the same inputs resumes
from it, and the per-epoch shuffle depends only on (seed, epoch), so a resumed run ends where an
uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from wsss import interrupt
from wsss.amp import autocast
from wsss.cam.store import cam_path, load_cam
from wsss.io import atomic_path, load_keyed
from wsss.progress import WarmProgress
from wsss.prompts.learner import PromptLearner
from wsss.prompts.loss import PromptLossWeights, prompt_loss
from wsss.settings import PromptsSettings

CROP_BATCH = 64  # crops per image-encoder forward


@dataclass
class CropFeatures:
    """One row per (image, present class): its background and object crops' embeddings [N, E] and the
    class index [N] (0-based), plus the key of the inputs they were computed from."""

    background: torch.Tensor
    foreground: torch.Tensor
    classes: torch.Tensor
    key: str = ""

    def __len__(self) -> int:
        return len(self.classes)


def teacher_mask(record, j: int, source: str, threshold: float | None) -> np.ndarray:
    """Class j's soft foreground map M in [0, 1] from a CAM record (binarised at `threshold` if given)."""
    m = np.asarray(getattr(record, source)[j], np.float32).clip(0, 1)
    return (m > threshold).astype(np.float32) if threshold is not None else m


def masked_crop_embeddings(visual, pixels: torch.Tensor, mask: torch.Tensor,
                           read_out: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(E((1 − M) ⊙ X), E(M ⊙ X)) for normalised pixels X [B, 3, H, W] and soft masks M [B, 1, H, W]: the
    background and object crops SemPLeS embeds (a cut-out pixel becomes 0, i.e. the mean colour)."""
    from wsss.clip.embed import image_embedding

    return image_embedding(visual, pixels * (1 - mask), read_out), image_embedding(visual, pixels * mask, read_out)


def crop_features(ds, teacher_dir: str | Path, model, cfg: PromptsSettings, key: str = "",
                  progress: bool = True) -> CropFeatures:
    """Embed every (image, class) pair's background and object crops, streaming the images of `ds`."""
    from wsss.clip.dense import _pair, image_mean_std, preprocess

    patch_size = _pair(model.visual.patch_size)
    mean, std = image_mean_std(model.visual)
    device = next(model.parameters()).device
    pending: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor, int]]] = {}  # crops by padded size
    background, foreground, classes = [], [], []

    def flush(size):
        batch = pending.pop(size)
        x = torch.stack([x for x, _, _ in batch]).to(device)
        m = torch.stack([m for _, m, _ in batch]).to(device)[:, None]
        with torch.no_grad(), autocast(device, cfg.amp):
            b, f = masked_crop_embeddings(model.visual, x, m, cfg.image_embedding)
        background.append(b.cpu())
        foreground.append(f.cpu())
        classes.extend(k for _, _, k in batch)

    with WarmProgress(len(ds), "prompt crops", disable=not progress) as bar:
        for _, row in ds.table.iterrows():
            interrupt.check()
            x = preprocess(ds.load_rgb(row), patch_size, mean, std)
            record = load_cam(cam_path(teacher_dir, row["id"]))
            size = tuple(x.shape[-2:])
            for j, label in enumerate(record.labels):
                m = torch.from_numpy(teacher_mask(record, j, cfg.source, cfg.mask_threshold))
                m = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
                pending.setdefault(size, []).append((x, m, int(label) - 1))
                if len(pending[size]) == CROP_BATCH:
                    flush(size)
            bar.update(1)
    for size in list(pending):
        flush(size)
    if not classes:
        from wsss.errors import DataError

        raise DataError(f"prompts: no labelled image in split {cfg.split!r} to learn background prompts from")
    return CropFeatures(torch.cat(background), torch.cat(foreground), torch.tensor(classes, dtype=torch.long), key)


def loss_weights(cfg: PromptsSettings) -> PromptLossWeights:
    return PromptLossWeights(class_push=cfg.class_push, foreground_repel=cfg.foreground_repel,
                             softmax_match=cfg.softmax_match)


def learning_rate(cfg: PromptsSettings, epoch: int) -> float:
    """The epoch's learning rate: constant, or SemPLeS's cosine to 0 (timm's, no warm-up) stepped per epoch
    as its loop does, with `step(epoch)` after the epoch: epoch e ≥ 1 trains at the cosine of e − 1."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * max(epoch - 1, 0) / cfg.epochs))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The pairs' order in an epoch: a function of (seed, epoch) only, so resuming changes nothing."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train_prompts(learner: PromptLearner, feats: CropFeatures, class_text: torch.Tensor, cfg: PromptsSettings,
                  logit_scale: float, checkpoint: str | Path | None = None, key: str = "",
                  on_epoch: Callable[[int, dict], None] | None = None, progress: bool = True) -> list[dict]:
    """AdamW on the prompt tokens for `cfg.epochs` epochs of shuffled (crop, class) batches; returns the
    per-epoch history [{"epoch", "loss", <terms>}]. Resumes from `checkpoint` when its key matches."""
    device = learner.ctx.device
    optimizer = torch.optim.AdamW([learner.ctx], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and cfg.amp == "fp16")
    history: list[dict] = []
    checkpoint = Path(checkpoint) if checkpoint else None
    state = load_keyed(checkpoint, key, "prompts", "epoch 0") if checkpoint else None
    if state is not None:
        with torch.no_grad():
            learner.ctx.copy_(state["ctx"].to(device))
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        print(f"prompts: resuming after epoch {len(history)} of {cfg.epochs} ({checkpoint})")
    b, f = feats.background.to(device), feats.foreground.to(device)
    cls, text = feats.classes.to(device), class_text.to(device)
    weights = loss_weights(cfg)
    with tqdm(total=cfg.epochs, initial=len(history), desc="prompt epochs", unit="epoch", disable=not progress) as bar:
        for epoch in range(len(history), cfg.epochs):
            totals: dict[str, float] = {}
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch)
            order = epoch_order(len(feats), cfg.seed, epoch).to(device)
            for start in range(0, len(order), cfg.batch_size):
                interrupt.check()
                idx = order[start:start + cfg.batch_size]
                with autocast(device, cfg.amp):
                    prompts = learner()
                k = cls[idx]
                loss, terms = prompt_loss(b[idx], f[idx], text[k], prompts[k], weights, logit_scale)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                for name, value in {"loss": float(loss.detach()), **terms}.items():
                    totals[name] = totals.get(name, 0.0) + value * len(idx)
            record = {"epoch": epoch + 1, "lr": learning_rate(cfg, epoch),
                      **{k: v / len(order) for k, v in totals.items()}}
            history.append(record)
            if checkpoint:
                with atomic_path(checkpoint) as tmp:
                    torch.save({"key": key, "ctx": learner.ctx.detach().cpu(), "optimizer": optimizer.state_dict(),
                                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                                "history": history}, tmp)
            if on_epoch:
                on_epoch(epoch + 1, record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
    return history
