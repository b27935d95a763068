"""Learn per-class background prompts from CLIP-ES teacher maps (docs/method.md §6).

For each training image and each class it carries, M = the class's teacher map (image labels only, never
ground truth), X_b = (1 − M) ⊙ X and X_f = M ⊙ X on the normalised pixels, embedded with CLIP's class
token (`prompts.image_embedding: cls`, SemPLeS) or the mean of its patch tokens (`patch_mean`, the read-out
CAM scoring uses). Both CLIP encoders are frozen and the teacher maps fixed, so with `prompts.crops:
native` every crop is embedded once, at the image's own size; `augmented` re-draws them every epoch as
SemPLeS's data loader does (a random resized crop and flip of image and map, at the CLIP's input size).
Each step encodes the C prompts and scores a batch with `prompt_loss`: `batch_size` (crop, class) pairs,
or (`batch_unit: images`, SemPLeS's loop) `batch_size` images with all their present classes. One
checkpoint per epoch (prompt tokens, AdamW state, loss history); a rerun with the same inputs resumes
from it, and every draw (order, crops) depends only on (seed, epoch, image), so a resumed run ends where
an uninterrupted one would.
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
    """One row per (image, present class): its background and object crops' embeddings [N, E], the class
    index [N] (0-based), the image's index in the split [N] (rows of one image are adjacent; None: each
    row is an image of its own) and how many images the split has (some may carry no class), plus the
    key of the inputs they were computed from."""

    background: torch.Tensor
    foreground: torch.Tensor
    classes: torch.Tensor
    key: str = ""
    images: torch.Tensor | None = None
    num_images: int = 0

    def __len__(self) -> int:
        return len(self.classes)

    def image_index(self) -> tuple[torch.Tensor, int]:
        """(image index of each row, number of images)."""
        if self.images is None:
            return torch.arange(len(self)), len(self)
        return self.images, max(self.num_images, int(self.images.max()) + 1 if len(self) else 0)


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


AUGMENT_SCALE, AUGMENT_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # timm's RandomResizedCrop defaults, SemPLeS's loader


def augmented_view(x: torch.Tensor, maps: torch.Tensor, size: tuple[int, int],
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SemPLeS's training view of normalised pixels [3, H, W] and their teacher maps [K, H, W]: the box of a
    RandomResizedCrop (8-100 % of the area, aspect 3/4-4/3; torchvision's draw, seeded by `seed`) and a
    horizontal flip at p = 0.5, resized to `size` (bicubic pixels, bilinear maps). The maps follow the
    pixels, so each still covers its object."""
    from torchvision.transforms import RandomResizedCrop

    with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator: keep it out of it
        torch.manual_seed(seed)
        top, left, ch, cw = RandomResizedCrop.get_params(x, list(AUGMENT_SCALE), list(AUGMENT_RATIO))
        flip = float(torch.rand(())) < 0.5
    x = F.interpolate(x[None, :, top:top + ch, left:left + cw], size=size, mode="bicubic", align_corners=False)[0]
    maps = F.interpolate(maps[None, :, top:top + ch, left:left + cw], size=size, mode="bilinear",
                         align_corners=False)[0]
    return (x.flip(-1), maps.flip(-1)) if flip else (x, maps)


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each soft map [K, H, W] stretched to [0, 1) on its view, as SemPLeS's loop normalises its CAMs."""
    low = maps.amin(dim=(1, 2), keepdim=True)
    return (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low + 1e-4)


def view_seed(seed: int, epoch: int, image: int) -> int:
    """The seed of an image's augmented view in an epoch: a resumed run draws the same views."""
    return hash((seed, epoch, image)) & 0x7FFFFFFF


def crop_features(ds, teacher_dir: str | Path, model, cfg: PromptsSettings, key: str = "",
                  progress: bool = True, epoch: int | None = None) -> CropFeatures:
    """Embed every (image, class) pair's background and object crops, streaming the images of `ds`: at
    the image's own size, or (`prompts.crops: augmented`) epoch `epoch`'s augmented view of it, whose soft
    maps are min-max normalised on the view as SemPLeS's loop does."""
    from wsss.clip.dense import _pair, image_mean_std, preprocess

    augmented = cfg.crops == "augmented"
    if augmented and epoch is None:
        raise ValueError("augmented crops are drawn per epoch: pass `epoch`")
    patch_size = _pair(model.visual.patch_size)
    view_size = _pair(model.visual.image_size)
    mean, std = image_mean_std(model.visual)
    device = next(model.parameters()).device
    pending: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor, int, int]]] = {}  # crops by size
    background, foreground, classes, images = [], [], [], []

    def flush(size):
        batch = pending.pop(size)
        x = torch.stack([x for x, _, _, _ in batch]).to(device)
        m = torch.stack([m for _, m, _, _ in batch]).to(device)[:, None]
        with torch.no_grad(), autocast(device, cfg.amp):
            b, f = masked_crop_embeddings(model.visual, x, m, cfg.image_embedding)
        background.append(b.float().cpu())
        foreground.append(f.float().cpu())
        classes.extend(k for _, _, k, _ in batch)
        images.extend(i for _, _, _, i in batch)

    label = f"prompt crops (epoch {epoch + 1})" if augmented else "prompt crops"
    with WarmProgress(len(ds), label, disable=not progress) as bar:
        for i, (_, row) in enumerate(ds.table.iterrows()):
            interrupt.check()
            x = preprocess(ds.load_rgb(row), patch_size, mean, std)
            record = load_cam(cam_path(teacher_dir, row["id"]))
            if len(record.labels):
                maps = torch.stack([torch.from_numpy(teacher_mask(record, j, cfg.source, cfg.mask_threshold))
                                    for j in range(len(record.labels))])
                maps = F.interpolate(maps[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
                if augmented:
                    x, maps = augmented_view(x, maps, view_size, view_seed(cfg.seed, epoch, i))
                    if cfg.mask_threshold is None:
                        maps = min_max(maps)
                size = tuple(x.shape[-2:])
                for j, cls in enumerate(record.labels):
                    pending.setdefault(size, []).append((x, maps[j], int(cls) - 1, i))
                    if len(pending[size]) == CROP_BATCH:
                        flush(size)
            bar.update(1)
    for size in list(pending):
        flush(size)
    if not classes:
        from wsss.errors import DataError

        raise DataError(f"prompts: no labelled image in split {cfg.split!r} to learn background prompts from")
    order = torch.argsort(torch.tensor(images), stable=True)  # flushes by size interleave images: regroup
    return CropFeatures(torch.cat(background)[order], torch.cat(foreground)[order],
                        torch.tensor(classes, dtype=torch.long)[order], key, torch.tensor(images)[order], len(ds))


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
    """The pairs' (or images') order in an epoch: a function of (seed, epoch) only, so resuming changes nothing."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def epoch_batches(feats: CropFeatures, cfg: PromptsSettings, epoch: int) -> list[torch.Tensor]:
    """The row indices of each step of an epoch: `batch_size` shuffled (crop, class) pairs, or with
    `batch_unit: images` `batch_size` shuffled images with all their pairs, as SemPLeS's loop takes a batch
    of images and scores every present class of each (an image without a class adds nothing)."""
    if cfg.batch_unit == "pairs":
        return list(epoch_order(len(feats), cfg.seed, epoch).split(cfg.batch_size))
    images, n = feats.image_index()
    counts = torch.bincount(images, minlength=n)
    starts = torch.cumsum(counts, 0) - counts  # rows of one image are adjacent
    batches = []
    for chunk in epoch_order(n, cfg.seed, epoch).split(cfg.batch_size):
        rows = torch.cat([torch.arange(int(starts[i]), int(starts[i] + counts[i])) for i in chunk])
        if len(rows):
            batches.append(rows)
    return batches


def train_prompts(learner: PromptLearner, features: CropFeatures | Callable[[int], CropFeatures],
                  class_text: torch.Tensor, cfg: PromptsSettings, logit_scale: float,
                  checkpoint: str | Path | None = None, key: str = "",
                  on_epoch: Callable[[int, dict], None] | None = None, progress: bool = True) -> list[dict]:
    """AdamW on the prompt tokens for `cfg.epochs` epochs of shuffled batches (`epoch_batches`); returns the
    per-epoch history [{"epoch", "loss", <terms>}]. `features` are the crop embeddings, or a function of
    the epoch giving that epoch's (augmented crops). Resumes from `checkpoint` when its key matches."""
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
    text = class_text.to(device)
    weights = loss_weights(cfg)
    with tqdm(total=cfg.epochs, initial=len(history), desc="prompt epochs", unit="epoch", disable=not progress) as bar:
        for epoch in range(len(history), cfg.epochs):
            feats = features(epoch) if callable(features) else features
            b, f, cls = (t.to(device) for t in (feats.background, feats.foreground, feats.classes))
            totals: dict[str, float] = {}
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch)
            pairs = 0
            for idx in epoch_batches(feats, cfg, epoch):
                interrupt.check()
                idx = idx.to(device)
                with autocast(device, cfg.amp):
                    prompts = learner()
                k = cls[idx]
                loss, terms = prompt_loss(b[idx], f[idx], text[k], prompts[k], weights, logit_scale)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                pairs += len(idx)
                for name, value in {"loss": float(loss.detach()), **terms}.items():
                    totals[name] = totals.get(name, 0.0) + value * len(idx)
            record = {"epoch": epoch + 1, "lr": learning_rate(cfg, epoch),
                      **{k: v / max(pairs, 1) for k, v in totals.items()}}
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
