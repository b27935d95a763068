"""GPU check: the library's ML core on one GPU in one command — correctness checks and speed, one table.

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu_check.json      # one CUDA GPU, ≤ 8 minutes
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check.json         # any CPU, seconds (the unit test)

Made for a bare GPU machine (benchmarks/README.md, "GPU check"): it needs torch, torchvision, numpy,
Pillow, OpenCV, PyYAML, tqdm and open_clip_torch (+ ftfy, wcwidth, regex), and the project as `src/` on
the path (set up here, no install); never MLflow, Prefect, DVC, Great Expectations or boto3. It builds
everything it needs from random weights (no download) and runs the library's own code paths:

- cam:     `CamEngine` (GradCAM + CAA) on a random ViT-B-16-quickgelu: fp32 on the GPU against fp32 on the
           CPU, fp16/bf16 autocast against fp32, and images/s at VOC sizes for the engine (one image at a
           time and batched by size, as `wsss.cam.runner` does) against the per-class reference
           (`benchmarks/cam_reference.py`, one backward per class as the official code), with peak memory;
- prompts: `train_prompts` (PromptLearner through the frozen text tower, AdamW, AMP) steps/s at the
           published batch of 128 (image, class) pairs; the crop embeddings (`masked_crop_embeddings`);
- seg:     `train_segmenter` on DeepLab-V3 ResNet-101, crop 321, batch 10, AMP fp16 and bf16, it/s and
           peak memory; the same loop under `torchrun --nproc_per_node 1` with DistributedDataParallel
           must give the plain run's losses;
- predict: `wsss predict`'s path (`save_segmenter` → `resolve_segmenter` → `load_segmenter` →
           `predict_files`), single scale and multi-scale + flip, images/s.

Every section is guarded: a failure becomes an error row and the others still run. Prints a Markdown
table and writes it as JSON (`--out`); exits 1 when a check failed or a section broke, 2 when asked for a
GPU run without a GPU. `--tiny` runs the same code on a tiny random CLIP, tiny images and the toy
segmenter, 1–2 steps each, on the CPU (or the GPU when there is one): `tests/test_gpu_check.py` runs it so
the script cannot rot between GPU runs. Peak memory: `torch.cuda.max_memory_allocated` above the level
before the measurement (on a CPU: the process's peak RSS above it).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO / "src", REPO / "benchmarks"):  # runs from a bare checkout: no install, no PYTHONPATH needed
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MiB = 2 ** 20
CLIP_NAME = "ViT-B-16-quickgelu"
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# fp32 on the GPU against fp32 on the CPU (TF32 off for the comparison): the bounds.
FP32_CAM_MAX, FP32_CAA_MEAN = 2e-3, 0.01
# autocast against fp32, mean |difference| of the maps at image size (values in [0, 1]): GradCAM, CAA.
# bf16 keeps 8 mantissa bits against fp16's 11, hence the wider bound. Calibrated on CPU autocast with the
# random ViT-B-16 (benchmarks/README.md, "GPU check"); a trained CLIP's peaked maps differ less.
AMP_TOL = {"fp16": (0.01, 0.02), "bf16": (0.04, 0.08)}
DDP_RTOL = 1e-4  # |loss(torchrun + DDP) − loss(plain)| ≤ DDP_RTOL · max(1, |loss|), per iteration
SPEEDUP_GOAL = 3.0


@dataclass(frozen=True)
class Sizes:
    """What the check runs at: the real sizes on a GPU, or `--tiny` ones that take seconds on a CPU."""

    tiny: bool
    cam_images: tuple[tuple[int, int], ...]  # (width, height), VOC's common sizes
    cam_check_images: int  # how many of them the fp32 / autocast comparisons use
    cam_batch: int
    num_classes: int
    background_texts: int
    passes: int  # timed passes (the best counts), after one warm-up pass
    prompt_classes: int
    prompt_batch: int
    prompt_steps: int
    crop_size: tuple[int, int]  # (width, height) of the prompt crops
    crops: int
    seg_arch: str
    seg_width: int
    seg_crop: int
    seg_batch: int
    seg_iterations: int
    seg_warmup: int
    ddp_iterations: int
    predict_images: int
    predict_size: tuple[int, int]
    scales: tuple[float, ...]


def full_sizes() -> Sizes:
    voc = [(500, 375)] * 10 + [(375, 500)] * 3 + [(500, 333)] * 3  # 16 images, the three most common sizes
    return Sizes(tiny=False, cam_images=tuple(voc), cam_check_images=2, cam_batch=8, num_classes=20,
                 background_texts=27, passes=2, prompt_classes=20, prompt_batch=128, prompt_steps=40,
                 crop_size=(500, 375), crops=128, seg_arch="resnet101", seg_width=16, seg_crop=321, seg_batch=10,
                 seg_iterations=25, seg_warmup=5, ddp_iterations=2, predict_images=8, predict_size=(500, 375),
                 scales=(0.75, 1.0, 1.25))


def tiny_sizes() -> Sizes:
    return Sizes(tiny=True, cam_images=((40, 30), (40, 30), (30, 40)), cam_check_images=2, cam_batch=2,
                 num_classes=4, background_texts=3, passes=1, prompt_classes=3, prompt_batch=8, prompt_steps=2,
                 crop_size=(40, 30), crops=4, seg_arch="toy", seg_width=4, seg_crop=33, seg_batch=2,
                 seg_iterations=2, seg_warmup=1, ddp_iterations=2, predict_images=2, predict_size=(40, 30),
                 scales=(0.75, 1.0, 1.25))


@dataclass
class Row:
    section: str
    name: str
    value: float | None = None
    unit: str = ""
    peak_mib: float | None = None
    check: str | None = None  # the rule, e.g. "≤ 2e-3"; None: a measurement only
    ok: bool | None = None  # the check's result (None: no check)
    goal: bool = False  # a target, reported as met/missed; only checks and errors set the exit code
    detail: str = ""
    error: str | None = None

    def result(self) -> str:
        if self.error:
            return "ERROR"
        if self.ok is None:
            return ""
        return ("met" if self.ok else "missed") if self.goal else ("pass" if self.ok else "FAIL")


@dataclass
class Context:
    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    tmp: Path
    rows: list[Row] = field(default_factory=list)
    cache: dict = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {row.name}: {_fmt(row.value)} {row.unit}" + (f", peak {row.peak_mib:.0f} MiB" if row.peak_mib
                                                                 is not None else "")
              + (f"  [{row.check}: {row.result()}]" if row.check else "") + (f"  ({row.detail})" if row.detail else ""),
              flush=True)
        return row


# ---- timing and memory ---------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict):
    """out["mib"] = peak memory above the level at entry while the block ran (GPU: allocated bytes;
    CPU: resident set, its high-water mark reset through /proc/self/clear_refs where Linux allows)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield
        torch.cuda.synchronize(device)
        out["mib"] = (torch.cuda.max_memory_allocated(device) - base) / MiB
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = _rss("VmRSS")
    yield
    peak = _rss("VmHWM")
    out["mib"] = max(0.0, (peak - base) / MiB) if base is not None and peak is not None else 0.0


def best_time(fn: Callable[[], object], device: torch.device, passes: int) -> tuple[float, float]:
    """(best seconds of `passes` timed calls after one warm-up call, peak MiB of the last one)."""
    fn()
    times, mem = [], {}
    for i in range(passes):
        with peak_memory(device, mem) if i == passes - 1 else contextlib.nullcontext():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
    return min(times), mem.get("mib", 0.0)


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """TF32 off while the block runs (cuDNN convolutions use it by default), for fp32 comparisons."""
    if device.type != "cuda":
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# ---- shared inputs -------------------------------------------------------------------------------------------
def clip_model(ctx: Context):
    """The random CLIP (on the device under test) and its tokenizer, built once."""
    if "clip" not in ctx.cache:
        import logging

        import open_clip

        from cam_reference import tiny_clip

        if ctx.sizes.tiny:
            model = tiny_clip(layers=3, width=64, patch=8, image_size=32, embed_dim=32)
        else:
            logging.getLogger().disabled = True  # "no pretrained weights loaded": random weights are the point
            try:
                torch.manual_seed(0)
                model = open_clip.create_model(CLIP_NAME, pretrained=None)
            finally:
                logging.getLogger().disabled = False
            with torch.no_grad():  # peaked attention as in a trained CLIP (cam_throughput.py does the same)
                for blk in model.visual.transformer.resblocks:
                    blk.attn.in_proj_weight[: 2 * blk.attn.embed_dim].mul_(4.0)
        model = model.eval()
        ctx.cache["clip_cpu"] = copy.deepcopy(model)
        ctx.cache["clip"] = (model.to(ctx.device), open_clip.get_tokenizer(CLIP_NAME))
    return ctx.cache["clip"]


def texts(ctx: Context, embed_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    class_text = F.normalize(torch.randn(ctx.sizes.num_classes, embed_dim, generator=g), dim=-1)
    bg_text = F.normalize(torch.randn(ctx.sizes.background_texts, embed_dim, generator=g), dim=-1)
    return class_text, bg_text


def cam_inputs(ctx: Context):
    """VOC-size images with 1–3 present classes each (VOC averages ~1.5)."""
    from cam_reference import random_image

    rng = np.random.default_rng(0)
    images = [random_image(w, h, seed=i) for i, (w, h) in enumerate(ctx.sizes.cam_images)]
    counts = [1, 2, 1, 3, 2, 1, 1, 2]
    classes = [sorted(rng.choice(ctx.sizes.num_classes, min(counts[i % len(counts)], ctx.sizes.num_classes),
                                 replace=False).tolist()) for i in range(len(images))]
    return images, classes


def cam_engine(ctx: Context, model, amp: str | None):
    from wsss.cam.engine import CamEngine
    from wsss.settings import CamsSettings

    device = next(model.parameters()).device
    class_text, bg_text = texts(ctx, model.visual.output_dim)
    engine = CamEngine(model, class_text, bg_text, CamsSettings(amp=amp, batch_size=ctx.sizes.cam_batch), device)
    if amp and device.type == "cpu":
        engine.amp = AMP_DTYPES[amp]  # the library runs fp32 on a CPU; forced here so the autocast path runs
    return engine


# ---- sections --------------------------------------------------------------------------------------------------
def section_cam_check(ctx: Context) -> None:
    """fp32 on the device against fp32 on the CPU; fp16/bf16 autocast against fp32 on the device."""
    model, _ = clip_model(ctx)
    images, classes = cam_inputs(ctx)
    n = ctx.sizes.cam_check_images
    images, classes = images[:n], classes[:n]
    with exact_fp32(ctx.device):
        ref = [cam_engine(ctx, model, None)(im, c) for im, c in zip(images, classes)]
    cpu_engine = cam_engine(ctx, ctx.cache["clip_cpu"], None)
    cpu = [cpu_engine(im, c) for im, c in zip(images, classes)]
    cam_max = max(float(np.abs(a.cam - b.cam).max()) for a, b in zip(ref, cpu))
    caa_mean = float(np.mean(np.concatenate([np.abs(a.refined - b.refined).ravel() for a, b in zip(ref, cpu)])))
    caa_max = max(float(np.abs(a.refined - b.refined).max()) for a, b in zip(ref, cpu))
    same = " (device is the CPU: the code path only)" if ctx.device.type == "cpu" else ""
    ctx.add(Row("cam", f"fp32 {ctx.device.type} vs cpu: GradCAM max |d|", cam_max, "", check=f"≤ {FP32_CAM_MAX:g}",
                ok=cam_max <= FP32_CAM_MAX, detail=f"{n} images, TF32 off{same}"))
    ctx.add(Row("cam", f"fp32 {ctx.device.type} vs cpu: CAA mean |d|", caa_mean, "", check=f"≤ {FP32_CAA_MEAN:g}",
                ok=caa_mean <= FP32_CAA_MEAN, detail=f"max {caa_max:.2e}"))
    for amp, (cam_tol, caa_tol) in AMP_TOL.items():
        if ctx.device.type == "cuda" and amp == "bf16" and not torch.cuda.is_bf16_supported():
            ctx.add(Row("cam", f"{amp} autocast vs fp32", None, error="bf16 not supported by this GPU"))
            continue
        engine = cam_engine(ctx, model, amp)
        outs = [engine(im, c) for im, c in zip(images, classes)]
        cam_d = float(np.mean(np.concatenate([np.abs(a.cam - b.cam).ravel() for a, b in zip(outs, ref)])))
        caa_d = float(np.mean(np.concatenate([np.abs(a.refined - b.refined).ravel() for a, b in zip(outs, ref)])))
        cam_m = max(float(np.abs(a.cam - b.cam).max()) for a, b in zip(outs, ref))
        ok = cam_d <= cam_tol and caa_d <= caa_tol
        ctx.add(Row("cam", f"{amp} autocast vs fp32: GradCAM mean |d|", cam_d, "", check=f"≤ {cam_tol:g}",
                    ok=cam_d <= cam_tol, detail=f"max {cam_m:.3f}"))
        ctx.add(Row("cam", f"{amp} autocast vs fp32: CAA mean |d|", caa_d, "", check=f"≤ {caa_tol:g}",
                    ok=caa_d <= caa_tol, detail="" if ok else "see the README's note on random weights"))


def section_cam_speed(ctx: Context) -> None:
    """images/s at VOC sizes: the per-class reference against the engine, one at a time and batched."""
    from cam_reference import ReferenceClipEs
    from wsss.cam.engine import size_groups

    model, _ = clip_model(ctx)
    images, classes = cam_inputs(ctx)
    n, passes, device = len(images), ctx.sizes.passes, ctx.device
    class_text, bg_text = texts(ctx, model.visual.output_dim)
    reference = ReferenceClipEs(model, class_text, bg_text)
    rates: dict[str, float] = {}

    def measure(key: str, label: str, fn, detail: str = "") -> None:
        seconds, peak = best_time(fn, device, passes)
        rates[key] = n / seconds
        ctx.add(Row("cam", label, n / seconds, "img/s", peak, detail=detail))

    sizes = f"{n} images {', '.join(sorted({f'{w}×{h}' for w, h in ctx.sizes.cam_images}))}, " \
            f"{sum(map(len, classes)) / n:.2f} classes/img"
    for amp in (None, "fp16"):
        # On a GPU autocast covers the model only (the official code runs fp16 weights there); on a CPU it
        # would also cover the reference's numpy/OpenCV CAA, which rejects fp16: fp32 there.
        dtype = AMP_DTYPES.get(amp) if device.type == "cuda" else None

        def run_reference(dtype=dtype):
            with autocast(device, dtype):
                for im, c in zip(images, classes):
                    reference(im, c)

        note = "one backward per class, as the official code" + ("; cpu: fp32" if amp and dtype is None else "")
        measure(f"ref_{amp}", f"reference, per class, {amp or 'fp32'}", run_reference, sizes if amp is None else note)
    for amp in (None, "fp16"):
        engine = cam_engine(ctx, model, amp)
        measure(f"one_{amp}", f"engine, one image at a time, {amp or 'fp32'}",
                lambda engine=engine: [engine(im, c) for im, c in zip(images, classes)])
    groups = size_groups([im.size for im in images], cam_engine(ctx, model, None).patch_size, ctx.sizes.cam_batch)
    for amp in ("fp16", "bf16"):
        engine = cam_engine(ctx, model, amp)
        measure(f"batch_{amp}", f"engine, batched ≤ {ctx.sizes.cam_batch} by size, {amp}",
                lambda engine=engine: [engine.run_batch([images[i] for i in g], [classes[i] for i in g])
                                       for g in groups], detail=f"{len(groups)} batches")
    for key, label, goal in (("batch_fp16", "speed-up: engine batched fp16 / reference fp16", True),
                             ("one_fp16", "speed-up: engine one at a time fp16 / reference fp16", False),
                             ("one_None", "speed-up: engine fp32 / reference fp32", False)):
        base = rates["ref_fp16" if "fp16" in key else "ref_None"]
        speedup = rates[key] / base
        ctx.add(Row("cam", label, speedup, "×", check=f"≥ {SPEEDUP_GOAL:g}×" if goal else None,
                    ok=speedup >= SPEEDUP_GOAL if goal else None, goal=goal,
                    detail="goal; on a CPU (--tiny) it is not expected" if goal and device.type == "cpu" else ""))


def section_prompts(ctx: Context) -> None:
    """`train_prompts` steps/s at the published batch; the crop embeddings that feed it."""
    from wsss.prompts.learner import PromptLearner
    from wsss.prompts.train import CropFeatures, masked_crop_embeddings, train_prompts
    from wsss.settings import PromptsSettings

    model, tokenizer = clip_model(ctx)
    s, device = ctx.sizes, ctx.device
    dim = model.visual.output_dim
    g = torch.Generator().manual_seed(1)
    class_text = F.normalize(torch.randn(s.prompt_classes, dim, generator=g), dim=-1)

    def features(pairs: int) -> CropFeatures:
        return CropFeatures(F.normalize(torch.randn(pairs, dim, generator=g), dim=-1),
                            F.normalize(torch.randn(pairs, dim, generator=g), dim=-1),
                            torch.randint(0, s.prompt_classes, (pairs,), generator=g))

    logit_scale = float(model.logit_scale.detach().float().exp())
    for amp in ("fp16", "bf16"):
        cfg = PromptsSettings(batch_size=s.prompt_batch, epochs=1, amp=amp)
        learner = PromptLearner(model, tokenizer, s.prompt_classes, length=cfg.length, template=cfg.template,
                                seed=cfg.seed).to(device)
        train_prompts(learner, features(s.prompt_batch), class_text, cfg, logit_scale, progress=False)  # warm-up
        feats = features(s.prompt_batch * s.prompt_steps)
        mem = {}
        with peak_memory(device, mem):
            sync(device)
            t0 = time.perf_counter()
            history = train_prompts(learner, feats, class_text, cfg, logit_scale, progress=False)
            sync(device)
            seconds = time.perf_counter() - t0
        loss = history[-1]["loss"]
        cpu = ", cpu: fp32 (the library's autocast is GPU-only)" if device.type == "cpu" else ""
        ctx.add(Row("prompts", f"train_prompts, batch {s.prompt_batch}, {s.prompt_classes} classes, {amp}",
                    s.prompt_steps / seconds, "steps/s", mem["mib"], check="finite loss", ok=bool(np.isfinite(loss)),
                    detail=f"{cfg.length} tokens/prompt, loss {loss:.3f}{cpu}"))
    from wsss.amp import autocast as lib_autocast
    from wsss.clip.dense import image_mean_std, padded_size, preprocess
    from wsss.prompts.train import CROP_BATCH

    from cam_reference import random_image

    w, h = padded_size(*s.crop_size, model.visual.patch_size)
    mean, std = image_mean_std(model.visual)
    x = preprocess(random_image(*s.crop_size, seed=3), model.visual.patch_size, mean, std)
    batch = min(CROP_BATCH, s.crops)
    xs = x[None].expand(batch, -1, -1, -1).contiguous().to(device)
    masks = (torch.rand(batch, 1, h, w, generator=g) > 0.5).float().to(device)

    def embed():
        with torch.no_grad(), lib_autocast(device, "fp16"):
            for _ in range(0, s.crops, batch):
                masked_crop_embeddings(model.visual, xs, masks, "patch_mean")

    seconds, peak = best_time(embed, device, s.passes)
    ctx.add(Row("prompts", f"crop embeddings, {s.crops} (background, object) pairs {w}×{h}, fp16", s.crops / seconds,
                "pairs/s", peak, detail=f"{batch} per forward (CROP_BATCH), once per run: cached"))


class SyntheticPairs(torch.utils.data.Dataset):
    """What `SegmentationPairs` yields after its transform — (normalised crop [3, c, c], labels [c, c] with
    255s, image labels [C]) — from a seed, so two processes see the same batches."""

    def __init__(self, n: int, crop: int, num_classes: int, seed: int = 0):
        self.n, self.crop, self.num_classes, self.seed = n, crop, num_classes, seed

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 7919 + i)
        c = self.crop
        x = torch.randn(3, c, c, generator=g)
        coarse = torch.randint(0, self.num_classes + 1, (1, 1, c // 16 + 1, c // 16 + 1), generator=g).float()
        y = F.interpolate(coarse, size=(c, c), mode="nearest")[0, 0].long()
        y[torch.rand(c, c, generator=g) < 0.1] = 255
        present = torch.zeros(self.num_classes, dtype=torch.bool)
        present[(y[(y > 0) & (y < 255)] - 1).unique()] = True
        return x, y, present


def seg_settings(ctx: Context, iterations: int, amp: str | None):
    from wsss.settings import TrainSettings

    s = ctx.sizes
    return TrainSettings(arch=s.seg_arch, head="deeplabv3", width=s.seg_width, crop=s.seg_crop,
                         batch_size=s.seg_batch, iterations=iterations, amp=amp, device=str(ctx.device),
                         checkpoint_every=10 ** 9, log_every=1, workers=0, seed=0)


def seg_model(ctx: Context):
    from wsss.seg.model import build_segmenter

    torch.manual_seed(0)  # the same initial weights in the plain run and under torchrun
    return build_segmenter(ctx.sizes.seg_arch, ctx.sizes.num_classes + 1, width=ctx.sizes.seg_width)


def run_training(model, cfg, out_dir: Path, num_classes: int) -> tuple[list[float], list[float], dict]:
    """`train_segmenter` on synthetic batches: (losses, the time after each iteration, its statistics)."""
    from wsss.seg.train import train_segmenter

    device = torch.device(cfg.device)
    losses, stamps = [], []

    def on_log(iteration: int, metrics: dict) -> None:
        sync(device)
        losses.append(float(metrics["loss"]))
        stamps.append(time.perf_counter())

    data = SyntheticPairs(cfg.batch_size * cfg.iterations, cfg.crop, num_classes, cfg.seed)
    stats = train_segmenter(model, data, cfg, out_dir, on_log=on_log, progress=False)
    return losses, stamps, stats


def section_seg(ctx: Context) -> None:
    """`train_segmenter` it/s and peak memory, AMP fp16 and bf16."""
    s, device = ctx.sizes, ctx.device
    for amp in ("fp16", "bf16"):
        cfg = seg_settings(ctx, s.seg_iterations, amp)
        model = seg_model(ctx)
        mem = {}
        with peak_memory(device, mem):
            losses, stamps, _ = run_training(model, cfg, ctx.tmp / f"seg_{amp}", s.num_classes)
        w = s.seg_warmup
        rate = (len(stamps) - w) / (stamps[-1] - stamps[w - 1])
        cpu = "; cpu: fp32 (the library's autocast is GPU-only)" if device.type == "cpu" else ""
        name = "DeepLab-V3 ResNet-101" if s.seg_arch == "resnet101" else f"DeepLab-V3 {s.seg_arch}"
        ctx.add(Row("seg", f"train_segmenter {name}, crop {s.seg_crop}, batch {s.seg_batch}, {amp}", rate, "it/s",
                    mem["mib"], check="finite loss", ok=all(np.isfinite(losses)),
                    detail=f"{rate * s.seg_batch:.1f} img/s, iterations {w + 1}–{len(stamps)} timed{cpu}"))
        del model
        gc.collect()


def ddp_child(spec_path: Path) -> None:
    """Under `torchrun --nproc_per_node 1`: join the process group, wrap the segmenter in
    DistributedDataParallel, run `train_segmenter` on it and write the losses."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from wsss.seg.train import World

    spec = json.loads(spec_path.read_text())
    world = World.from_env()
    device = torch.device(spec["device"])
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        sizes = Sizes(**{k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
                         for k, v in spec["sizes"].items()})
        ctx = Context(argparse.Namespace(), sizes, device, Path(spec["out_dir"]))
        cfg = replace(seg_settings(ctx, sizes.ddp_iterations, None), device=str(device))
        model = seg_model(ctx).to(device)
        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        losses, _, _ = run_training(ddp, cfg, Path(spec["out_dir"]), sizes.num_classes)
        Path(spec["result"]).write_text(json.dumps({"losses": losses, "world_size": dist.get_world_size(),
                                                    "ddp": type(ddp).__name__}))
    finally:
        dist.destroy_process_group()


def section_ddp(ctx: Context) -> None:
    """The same training iterations plain and under `torchrun --nproc_per_node 1` + DDP: equal losses."""
    s = ctx.sizes
    cfg = seg_settings(ctx, s.ddp_iterations, None)
    plain, _, _ = run_training(seg_model(ctx), cfg, ctx.tmp / "ddp_plain", s.num_classes)
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()  # the child needs the memory
    spec = ctx.tmp / "ddp_spec.json"
    result = ctx.tmp / "ddp_result.json"
    spec.write_text(json.dumps({"sizes": asdict(s), "device": str(ctx.device), "out_dir": str(ctx.tmp / "ddp_child"),
                                "result": str(result)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(Path(__file__).resolve()), "--ddp-child", str(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300 if not s.tiny else 180)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"torchrun exited {proc.returncode}: {' | '.join(tail)}")
    child = json.loads(result.read_text())
    diffs = [abs(a - b) / max(1.0, abs(a)) for a, b in zip(plain, child["losses"])]
    ok = len(child["losses"]) == len(plain) == s.ddp_iterations and max(diffs) <= DDP_RTOL
    ctx.add(Row("seg", f"torchrun --nproc_per_node 1 + DDP vs plain: loss rel |d|", max(diffs), "",
                check=f"≤ {DDP_RTOL:g}", ok=ok,
                detail=f"{len(plain)} iterations fp32, losses {', '.join(f'{x:.4f}' for x in plain)} vs "
                       f"{', '.join(f'{x:.4f}' for x in child['losses'])}; {child['ddp']}, world "
                       f"{child['world_size']}, {seconds:.0f} s with start-up"))


def section_predict(ctx: Context) -> None:
    """`wsss predict`'s path: segmenter file → resolve → load on the device → predict_files, images/s."""
    from PIL import Image

    from cam_reference import random_image
    from wsss.seg.infer import load_segmenter, save_segmenter
    from wsss.seg.predict import image_files, predict_files, resolve_segmenter

    s, device = ctx.sizes, ctx.device
    folder = ctx.tmp / "segmenter"
    folder.mkdir()
    classes = [f"class{i}" for i in range(1, s.num_classes + 1)]
    save_segmenter(folder / "segmenter.pt", seg_model(ctx), s.seg_arch, s.seg_width, classes)
    model, info = load_segmenter(resolve_segmenter(str(folder)), device)
    images = ctx.tmp / "images"
    images.mkdir()
    for i in range(s.predict_images):
        random_image(*s.predict_size, seed=100 + i).save(images / f"img{i}.jpg", quality=90)
    files = image_files([images])
    with Image.open(files[0]) as im:
        size = f"{im.width}×{im.height}"
    for scales, flip, label in (((1.0,), False, "single scale"),
                                (s.scales, True, f"scales {','.join(f'{x:g}' for x in s.scales)} + flip")):
        out = ctx.tmp / f"pred_{len(scales)}"

        def run(scales=scales, flip=flip, out=out):
            predict_files(model, info, files, out, scales, flip, progress=False)

        seconds, peak = best_time(run, device, s.passes)
        written = sorted(p.name for p in out.glob("*.png"))
        ok = len(written) == 2 * len(files)
        ctx.add(Row("predict", f"predict_files {s.seg_arch}, {label}", len(files) / seconds, "img/s", peak,
                    check="a label map + overlay per image", ok=ok,
                    detail=f"{len(files)} JPEGs {size}, PNG writing included"))


SECTIONS: dict[str, Callable[[Context], None]] = {
    "cam_check": section_cam_check, "cam_speed": section_cam_speed, "prompts": section_prompts,
    "seg": section_seg, "ddp": section_ddp, "predict": section_predict,
}


# ---- report ----------------------------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.1e}"


def table(rows: list[Row]) -> str:
    lines = ["| section | measurement | value | unit | peak MiB | check | result | detail |",
             "|---|---|---:|---|---:|---|---|---|"]
    for r in rows:
        peak = "—" if r.peak_mib is None else f"{r.peak_mib:.0f}"
        detail = r.error if r.error else r.detail
        cells = [r.section, r.name, _fmt(r.value), r.unit, peak, r.check or "", r.result(), detail]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def environment(device: torch.device, sizes: Sizes) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": str(device), "tiny": sizes.tiny, "threads": torch.get_num_threads(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    capability=f"{props.major}.{props.minor}")
    else:
        info["device_name"] = platform.processor() or platform.machine() or "CPU"
    try:
        import open_clip

        info["open_clip"] = open_clip.__version__
    except Exception:  # noqa: BLE001 — reported by the sections that need it
        info["open_clip"] = None
    return info


def third_party_modules() -> list[str]:
    """Top-level modules outside the standard library that this run imported (the bare machine's test)."""
    names = {m.split(".")[0] for m in list(sys.modules)}
    return sorted(n for n in names if n not in sys.stdlib_module_names and not n.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny models and inputs, seconds on a CPU (the unit test)")
    ap.add_argument("--device", default=None, help="cuda (default), cuda:N or cpu; --tiny: cuda if present, else cpu")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the table as JSON")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds; sections that would start later are skipped as errors (default 450, --tiny none)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (--tiny: 1)")
    ap.add_argument("--ddp-child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ddp_child:
        ddp_child(args.ddp_child)
        return 0
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() or not args.tiny else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch sees none); run it on a GPU machine, or pass --tiny or "
              "--device cpu", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    sizes = tiny_sizes() if args.tiny else full_sizes()
    budget = args.budget if args.budget is not None else (0 if args.tiny else 450)
    start = time.perf_counter()
    env = environment(device, sizes)
    print(f"gpu_check: {env['device_name']} ({device}), torch {env['torch']}, CUDA {env['cuda']}, "
          f"open_clip {env['open_clip']}, {'tiny' if sizes.tiny else 'full'} sizes", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        ctx = Context(args, sizes, device, Path(tmp))
        for name in args.sections:
            elapsed = time.perf_counter() - start
            print(f"== {name} (t = {elapsed:.0f} s)", flush=True)
            if budget and elapsed > budget:
                ctx.add(Row(name, f"{name}: skipped", error=f"time budget {budget:.0f} s spent before it started"))
                continue
            t0 = time.perf_counter()
            try:
                SECTIONS[name](ctx)
            except Exception as e:  # noqa: BLE001 — recorded in the table, the other sections still run
                traceback.print_exc()
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                ctx.add(Row(name, f"{name}: error", error=f"{type(e).__name__}: {first}"[:300]))
            print(f"   {name}: {time.perf_counter() - t0:.1f} s", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    rows = ctx.rows
    failed = [r.name for r in rows if r.error or (r.ok is False and not r.goal)]
    env["seconds"] = round(time.perf_counter() - start, 1)
    report = {"environment": env, "rows": [asdict(r) | {"result": r.result()} for r in rows],
              "failed": failed, "ok": not failed, "modules": third_party_modules()}
    print(f"\n### GPU check: {env['device_name']}, torch {env['torch']}, {env['seconds']:.0f} s\n")
    print(table(rows))
    print("\n" + ("all checks passed" if not failed else f"FAILED: {'; '.join(failed)}"), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".part")
    partial.write_text(json.dumps(report, indent=2, default=str))
    os.replace(partial, args.out)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
