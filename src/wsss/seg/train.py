"""Train the segmenter on the pseudo masks (docs/method.md §5), one process or many (`torchrun`, DDP).

SGD with momentum and the poly schedule, the confidence-guided loss, joint random scale/crop/flip, AMP
on GPU. The run is counted in iterations; every `checkpoint_every` iterations rank 0 writes model,
optimiser, schedule and scaler state atomically, and a rerun with the same inputs continues from there —
the sampler's order depends only on (seed, epoch) and each crop's randomness on (seed, epoch, image), so
it continues the very batch sequence it was on. Launched by `torchrun`, every rank runs this function on
its shard of each epoch; gradients are averaged by DistributedDataParallel (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from wsss import interrupt
from wsss.amp import amp_dtype
from wsss.io import atomic_path, load_keyed
from wsss.seg.loss import confidence_guided_loss
from wsss.settings import TrainSettings

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class World:
    """This process's place in a `torchrun` launch (rank 0 of 1 without one)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "World":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0


class EpochSampler(Sampler[int]):
    """A permutation per epoch from (seed, epoch), split across ranks, that can start `skip` batches in:
    how a resumed run picks up the exact batch it stopped at."""

    def __init__(self, n: int, batch_size: int, seed: int, world: World = World()):
        self.n, self.batch_size, self.seed, self.world = n, batch_size, seed, world
        self.per_rank = n // world.size
        self.epoch, self.skip = 0, 0

    @property
    def batches(self) -> int:
        return self.per_rank // self.batch_size

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        mine = order[self.world.rank::self.world.size][:self.per_rank]
        return iter(mine[self.skip * self.batch_size:self.batches * self.batch_size].tolist())

    def __len__(self) -> int:
        return (self.batches - self.skip) * self.batch_size


def poly(total: int, power: float) -> Callable[[int], float]:
    return lambda it: max(0.0, 1 - it / total) ** power


def pick_device(spec: str, world: World) -> torch.device:
    """`auto`: this rank's GPU (cuda:LOCAL_RANK) when there is one, else the CPU."""
    from wsss.device import pick_device as pick

    return torch.device(pick(spec, world.local_rank))


def backbone_lr(cfg: TrainSettings) -> float:
    """The backbone's learning-rate factor: `train.backbone_lr`, or the architecture's default (the CLIP
    tower frozen, an ImageNet backbone fine-tuned at the full rate)."""
    if cfg.backbone_lr is not None:
        return cfg.backbone_lr
    return 0.0 if cfg.arch == "clip" else 1.0


def param_groups(model: torch.nn.Module, cfg: TrainSettings) -> list[dict]:
    """The pretrained backbone at lr × `backbone_lr`, everything else (head, decoder, pixel stem) at lr;
    frozen parameters are left out."""
    factor = backbone_lr(cfg)
    backbone, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            pretrained = name.startswith("backbone.") and not name.startswith("backbone.stem.")
            (backbone if pretrained else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr}]
    if backbone and factor > 0:
        groups.append({"params": backbone, "lr": cfg.lr * factor})
    return groups


def train_segmenter(model: torch.nn.Module, train_set, cfg: TrainSettings, out_dir: str | Path, key: str = "",
                    on_log: Callable[[int, dict], None] | None = None,
                    on_checkpoint: Callable[[int, torch.nn.Module], None] | None = None,
                    progress: bool = True, refine: torch.nn.Module | None = None) -> dict:
    """Train `model` in place for `cfg.iterations` iterations; returns {"iterations", "resumed_from",
    "seconds", "images_per_second", "data_seconds"}. `on_log(iteration, metrics)` gets loss and LR every
    `cfg.log_every` iterations (rank 0); `on_checkpoint(iteration, model)` runs after each checkpoint
    (rank 0, model in eval mode), e.g. a validation pass. `refine(x, logits, labels)`, when given, is an
    extra loss term on batches (x, y, image labels) — SemPLeS's prompt refinement (`wsss.seg.refine`)."""
    world = World.from_env()
    device = pick_device(cfg.device, world)
    model.to(device)
    ddp = model
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = EpochSampler(len(train_set), cfg.batch_size, cfg.seed, world)
    if sampler.batches == 0:
        from wsss.errors import DataError

        raise DataError(f"train: {len(train_set)} images are fewer than one batch of {cfg.batch_size} per process")
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=False,
                        generator=torch.Generator().manual_seed(cfg.seed))  # not the global RNG (dropout's)
    optimizer = torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, poly(cfg.iterations, cfg.poly_power))
    amp = amp_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    checkpoint = Path(out_dir) / CHECKPOINT_FILE
    iteration = 0
    state = load_keyed(checkpoint, key, "train", "iteration 0")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        iteration = int(state["iteration"])
        torch.set_rng_state(state["rng"])  # dropout draws continue where they were
        if world.main:
            print(f"train: resuming at iteration {iteration} of {cfg.iterations} ({checkpoint})")
    resumed_from = iteration
    model.train()
    start, data_seconds, seen = time.perf_counter(), 0.0, 0
    bar = tqdm(total=cfg.iterations, initial=iteration, desc="train", unit="it", disable=not (progress and world.main))
    while iteration < cfg.iterations:
        epoch, skip = divmod(iteration, sampler.batches)
        sampler.set_epoch(epoch, skip)
        train_set.set_epoch(epoch)
        fetched = time.perf_counter()
        for x, y, *labels in loader:
            interrupt.check()
            data_seconds += time.perf_counter() - fetched
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = ddp(x)["out"]
                extra = refine(x, logits, labels[0].to(device)) if refine is not None else None
            loss = confidence_guided_loss(logits, y)
            terms = {"loss_cgl": float(loss.detach())}
            if extra is not None:
                loss = loss + extra
                terms["loss_refine"] = float(extra.detach())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            iteration += 1
            seen += len(x) * world.size
            bar.update(1)
            if world.main and on_log and (iteration % cfg.log_every == 0 or iteration == cfg.iterations):
                on_log(iteration, {"loss": float(loss.detach()), **terms, "lr": schedule.get_last_lr()[0]})
            if iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations:
                if world.main:
                    save_checkpoint(checkpoint, key, model, optimizer, schedule, scaler, iteration)
                    if on_checkpoint:
                        model.eval()
                        on_checkpoint(iteration, model)
                        model.train()
                if world.size > 1:
                    torch.distributed.barrier()
            if iteration >= cfg.iterations:
                break
            fetched = time.perf_counter()
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    return {"iterations": iteration, "resumed_from": resumed_from, "seconds": seconds,
            "images_per_second": seen / seconds if seen else 0.0, "data_seconds": data_seconds}


def save_checkpoint(path: Path, key: str, model, optimizer, schedule, scaler, iteration: int) -> None:
    with atomic_path(path) as tmp:
        torch.save({"key": key, "iteration": iteration, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "rng": torch.get_rng_state()}, tmp)
