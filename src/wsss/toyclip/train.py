"""Train the project's small CLIP (`wsss-toy-vit`, an open_clip config) on toy-world captions, on a CPU.

Every choice serves the CAMs computed from the model (docs/method.md §2–3): a mean-of-patch-tokens image
embedding, as CAM scoring reads it; captions that claim only what they name (multi-positive contrastive
targets, `fit_matrix`); 2×2 mosaics whose tiles must match their own captions (`tile_embeddings`); the
same loss on the last block's value path, which softmax-GradCAM differentiates (`value_embeddings`); an
attention-affinity term and a paste-consistency term so that CAA's affinity means something
(`affinity_loss`, `paste_consistency`); crops that keep every object; and a CPU-fast step (`block_forward`,
`TokenRows`, fused AdamW, `keep_freed_memory`). Why each one, with the measurements behind it and what
was tried: docs/toy-clip.md. Settings: `ToyClipTraining` (the sidecar's `params`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from wsss.clip.dense import OPENAI_MEAN, OPENAI_STD
from wsss.errors import ConfigError, DataError
from wsss.toyclip.settings import ToyClipTraining
from wsss.io import atomic_path, write_json
from wsss.toyworld.captions import Facts, fit_matrix, make_caption, read_facts
from wsss.toyworld.generate import drawn_otherwise

log = logging.getLogger(__name__)

# The corpus the committed checkpoint was trained on: generated into `data_root` when it is missing.
CORPUS = dict(num_train=24000, num_val=0, image_size=64, seed=1001, empty_fraction=0.06)


def load_corpus(data_root: Path, split: str, max_images: int | None = None):
    """Images (uint8 N×3×H×W), facts and union boxes (N×4, 0-based x0, y0, x1, y1 exclusive) of a split."""
    split_file = data_root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.exists():
        raise DataError(f"{split_file}: split file not found (is {data_root} a toy world?)")
    ids = [s.strip() for s in split_file.read_text().split() if s.strip()]
    if max_images:
        ids = ids[:max_images]
    if not ids:
        raise DataError(f"{split_file}: no images")
    facts: list[Facts] = []
    boxes = np.zeros((len(ids), 4), np.float32)
    images = None
    for i, image_id in enumerate(tqdm(ids, desc=f"load {split}", unit="img", leave=False)):
        f, bb = read_facts(data_root / "Annotations" / f"{image_id}.xml")
        img = np.asarray(Image.open(data_root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        if images is None:
            images = np.zeros((len(ids), 3, *img.shape[:2]), np.uint8)
        if img.shape[:2] != images.shape[2:]:
            raise DataError(f"{image_id}: image size {img.shape[:2]} differs from the corpus' {images.shape[2:]}")
        images[i] = img.transpose(2, 0, 1)
        facts.append(f)
        if bb:
            b = np.array(bb, np.float32)
            boxes[i] = (b[:, 0].min() - 1, b[:, 1].min() - 1, b[:, 2].max(), b[:, 3].max())
        else:
            boxes[i] = (img.shape[1] / 2, img.shape[0] / 2, img.shape[1] / 2, img.shape[0] / 2)
    return torch.from_numpy(images), facts, boxes, ids


def crop_params(boxes: np.ndarray, size: int, rng: np.random.Generator, min_scale: float, p_crop: float):
    """Square crops (x0, y0, side) that contain each image's union box and lie inside the image."""
    n = len(boxes)
    need = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    lo = np.clip(np.maximum(need + 2, min_scale * size), 1, size)
    side = lo + rng.random(n) * (size - lo)
    side = np.where(rng.random(n) < p_crop, side, size)
    # x0 in [max(0, bx1 - side), min(bx0, size - side)]
    # the 1-px margin is dropped where a box touches the image border (it cannot fit there)
    x_lo = np.minimum(np.maximum(0, boxes[:, 2] + 1 - side), size - side)
    y_lo = np.minimum(np.maximum(0, boxes[:, 3] + 1 - side), size - side)
    x_hi = np.minimum(np.maximum(boxes[:, 0] - 1, 0), size - side)
    y_hi = np.minimum(np.maximum(boxes[:, 1] - 1, 0), size - side)
    x0 = x_lo + rng.random(n) * np.maximum(x_hi - x_lo, 0)
    y0 = y_lo + rng.random(n) * np.maximum(y_hi - y_lo, 0)
    return x0, y0, side


def augment(images: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator, min_scale: float = 0.55,
            p_crop: float = 0.5) -> torch.Tensor:
    """uint8 batch → normalised float batch: object-preserving random square crop, flip, brightness.

    One batched `grid_sample` (bilinear) does crop + resize + flip for the whole batch.
    """
    n, _, h, w = images.shape
    x = images.float().div_(255)
    x0, y0, side = crop_params(boxes, w, rng, min_scale, p_crop)
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    # affine_grid maps output coords in [-1, 1] to input coords in [-1, 1] (align_corners=False)
    sx = side / w
    tx = (2 * x0 + side) / w - 1
    ty = (2 * y0 + side) / h - 1
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = side / h
    theta[:, 1, 2] = ty
    grid = F.affine_grid(torch.from_numpy(theta), (n, 3, h, w), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = x * torch.from_numpy(rng.uniform(0.85, 1.15, (n, 1, 1, 1)).astype(np.float32))
    x = x.clamp_(0, 1)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)  # OpenAI CLIP normalisation, as in CAM scoring
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)  # OpenAI CLIP normalisation, as in CAM scoring
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def multi_positive_loss(logits: torch.Tensor, fits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE whose targets are the normalised rows / columns of `fits` (repeated captions)."""
    t_img = fits / fits.sum(1, keepdim=True)
    t_txt = (fits / fits.sum(0, keepdim=True)).T
    loss_i = -(t_img * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(t_txt * F.log_softmax(logits.T, 1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def block_forward(block, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """An open_clip `ResidualAttentionBlock` forward (batch-first, self-attention) with the attention
    written out as softmax(q·kᵀ/√d)·v, equal to `block(x, attn_mask=...)`.

    Why not call the block: on a CPU, PyTorch's fused attention kernel spends more than half of a training
    step in its backward at the toy's sequence lengths (65 image / about 12 text tokens); written out, the
    image tower's forward + backward is 2.3× faster (`benchmarks/train_step.py`), which buys the toy CLIP
    that many more steps inside its CPU budget.
    """
    a = block.attn
    q, k, v = F.linear(block.ln_1(x), a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1)
    b, n, d = q.shape
    q, k, v = (t.reshape(b, n, a.num_heads, d // a.num_heads).transpose(1, 2) for t in (q, k, v))
    logits = (q * (d // a.num_heads) ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:
        logits = logits + attn_mask
    o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    x = x + block.ls_1(a.out_proj(o))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def text_embeddings(model, tokens: torch.Tensor, embed=None) -> torch.Tensor:
    """`model.encode_text(tokens)` (argmax pooling, projection matrix) through `block_forward`.

    The context is cut after the batch's longest caption: under the causal mask no position attends to a
    later one, so the end-of-text token's output, the one pooled, is unchanged (toy captions fill about
    half of the 24 positions). `embed` looks the tokens up instead of `model.token_embedding` (`TokenRows`).
    """
    if getattr(model, "text_pool_type", "argmax") != "argmax" or model.attn_mask is None:
        raise ConfigError("train-toy-clip needs a causal text tower pooled at the end-of-text token")
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = (embed if embed is not None else model.token_embedding)(tokens) + model.positional_embedding[:length]
    for block in model.transformer.resblocks:
        x = block_forward(block, x, model.attn_mask[:length, :length])
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def image_tokens(visual, x: torch.Tensor, attn_images: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(ln_post'ed tokens [B, 1 + h·w, D], class token first; the last block's per-token value path
    W_o·W_v·ln_1(x) [B, 1 + h·w, D]; the patch attention averaged over heads and blocks, the matrix CAA
    reads, of the first `attn_images` inputs [a, h·w, h·w], or None) for any input size (positional
    embedding interpolated, with grad)."""
    from wsss.clip.dense import accumulate_attention, embed_tokens, interpolate_pos_embed

    z = embed_tokens(visual, x, lambda h, w: interpolate_pos_embed(visual.positional_embedding, visual.grid_size,
                                                                    (h, w)))
    dim, n = z.shape[-1], z.shape[1] - 1
    if not visual.transformer.batch_first:
        raise ConfigError("train-toy-clip needs a batch-first open_clip transformer")
    *trunk, last = visual.transformer.resblocks
    attn = z.new_zeros(attn_images, n, n, dtype=torch.float32) if attn_images else None
    per_block = 1 / (len(trunk) + 1)  # accumulated over every block: their mean
    for block in trunk:
        if attn is not None:
            attn = accumulate_attention(block.attn, block.ln_1(z[:attn_images]), attn, per_block)
        z = block_forward(block, z)
    if attn is not None:
        attn = accumulate_attention(last.attn, last.ln_1(z[:attn_images]), attn, per_block)
    a = last.attn
    values = F.linear(F.linear(last.ln_1(z), a.in_proj_weight[2 * dim:], a.in_proj_bias[2 * dim:]),
                      a.out_proj.weight, a.out_proj.bias)
    return visual.ln_post(block_forward(last, z)), values, attn


def affinity_loss(attn: torch.Tensor, tokens: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """KL(T ‖ W): each patch's averaged attention W (rows renormalised over patches) against T, the softmax
    of its output token's cosine similarity to the other patches' (detached, temperature `tau`).

    CAA (docs/method.md §3) reads the averaged attention as an affinity: a patch should attend to patches of
    its own object or background. A large CLIP's attention does that; a 4-block toy CLIP trained for
    minutes pools instead (its Sinkhorn-normalised A² is uniform). Its own output tokens already separate
    objects from background (they localise the CAMs), so they supply the target; no label is involved.
    """
    f = F.normalize(tokens[:, 1:].detach().float(), dim=-1)
    target = torch.softmax(f @ f.transpose(1, 2) / tau, dim=-1)
    w = attn / attn.sum(-1, keepdim=True)
    return (target * (target.clamp_min(1e-12).log() - w.clamp_min(1e-12).log())).sum(-1).mean()


def mosaic(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B, 3, s, s] → [B / k², 3, k·s, k·s]: consecutive images tiled row-major into one picture."""
    b, c, s, _ = x.shape
    return x.view(b // (k * k), k, k, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(b // (k * k), c, k * s, k * s)


def tile_means(tokens: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Mean patch token of every tile of k×k mosaics [B, 1 + (k·g)², D] → [B·k², D] (k = 1: whole images)."""
    b, g = tokens.shape[0], tokens.shape[1] - 1
    side = math.isqrt(g) // k
    return tokens[:, 1:].reshape(b, k, side, k, side, -1).mean((2, 4)).reshape(b * k * k, -1)


def tile_embeddings(visual, tokens: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Embedding of every tile of k×k mosaics from their ln_post'ed `image_tokens` (k = 1: whole images).

    The mean of a tile's ln_post'ed patch tokens, projected: for k = 1 exactly `encode_image` of the
    avg-pool config, the CAM scoring path (docs/method.md §2). For k = 2 a token that carries content from
    another tile pulls its own tile towards the wrong caption, so mosaic steps teach patch tokens to
    speak for their own region, which is what a CAM reads.
    """
    return tile_means(tokens, k) @ visual.proj


def value_embeddings(visual, values: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The tiles' mean last-block value path, through ln_post's scale and the projection: the linear
    read-out softmax-GradCAM takes of each token (its gradient at ln_1 reaches the score only through
    the attention, i.e. W_o·W_v, then ln_post and the projection)."""
    return (tile_means(values, k) * visual.ln_post.weight) @ visual.proj


def paste(x: torch.Tensor, source: torch.Tensor, patch: int, rng: np.random.Generator,
          min_side: int = 2, max_side: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image with a random grid-aligned rectangle of its source image pasted in place.

    Returns the pasted images [m, 3, H, W] and the pasted patches, bool [m, h·w] (row-major grid).
    """
    m, _, h, w = x.shape
    gh, gw = h // patch, w // patch
    out = x.clone()
    where = torch.zeros(m, gh, gw, dtype=torch.bool)
    for i in range(m):  # one rectangle per image
        rh, rw = rng.integers(min_side, min(max_side, gh) + 1), rng.integers(min_side, min(max_side, gw) + 1)
        r0, c0 = rng.integers(0, gh - rh + 1), rng.integers(0, gw - rw + 1)
        where[i, r0:r0 + rh, c0:c0 + rw] = True
        sl = (i, slice(None), slice(r0 * patch, (r0 + rh) * patch), slice(c0 * patch, (c0 + rw) * patch))
        out[sl] = source[sl]
    return out, where.flatten(1)


def paste_consistency(z_clean: torch.Tensor, z_pasted: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """1 − cosine between each patch token of a pasted image and the same token of the clean image its
    content came from: z_clean [2m, 1 + N, D] holds the m targets then the m sources, z_pasted [m, 1 + N, D].

    A token that reads other regions changes when they are replaced, so the loss asks tokens to attend to
    tokens of their own kind (their own object or background), the affinity CAA reads (docs/method.md §3).
    """
    m = z_pasted.shape[0]
    target = torch.where(where[..., None], z_clean[m:2 * m, 1:], z_clean[:m, 1:])
    return (1 - F.cosine_similarity(z_pasted[:, 1:].float(), target.float(), dim=-1)).mean()


def keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks of up to 32 MB in the heap instead of returning them to the system.

    Every step allocates and frees activations and gradients of several MB; by default glibc maps such a
    block anew each time and the step spends a sixth of its time page-faulting them in (measured with
    the whole token embedding trained, whose 25 MB gradient was the largest, and again with `TokenRows`:
    `benchmarks/README.md`). Process-wide, and a no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: no trimming below 1 GiB of free heap top
        libc.mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: heap, not mmap, for blocks up to 32 MB (glibc's max)
    except (OSError, AttributeError):
        pass


def _param_groups(model: torch.nn.Module, weight_decay: float, rows: TokenRows | None = None):
    """AdamW groups: weight decay on matrices only (not on embeddings, gains, biases, the logit scale, or
    the `TokenRows` that stand in for the token embedding)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    if rows is not None:
        no_decay.append(rows.weight)  # last: the order of the clipped gradient's norm terms, fixed
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TokenRows:
    """The token-embedding rows the captions use, trained as one small table instead of the whole embedding.

    The toy captions use about a hundred of the tokenizer's 49,408 tokens, yet the embedding's dense
    gradient is 25 MB a step to zero, fill, clip and step AdamW over (4.5–6 ms of a step of about 150 ms,
    `benchmarks/train_step.py`). Trained in place, a row that has never had a gradient keeps zero Adam
    moments and, embeddings having no weight decay, never moves; a row used before moves on its momentum
    either way. So training only the rows captions use is the same optimisation (up to the order in which
    the clipped gradient's norm is summed). A row gets a slot when a caption first uses it; `write_back`
    puts the rows into the model.
    """

    def __init__(self, embedding: torch.nn.Embedding, capacity: int = 2048):
        self.embedding = embedding
        self.weight = torch.nn.Parameter(embedding.weight.detach().new_zeros(capacity, embedding.embedding_dim))
        self.slot = torch.full((embedding.num_embeddings,), -1, dtype=torch.long)
        self.ids = torch.zeros(0, dtype=torch.long)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        new = torch.unique(tokens[self.slot[tokens] < 0])
        if len(new):
            start = len(self.ids)
            if start + len(new) > len(self.weight):
                raise ConfigError(f"train-toy-clip: the captions use more than {len(self.weight)} distinct tokens")
            self.slot[new] = torch.arange(start, start + len(new))
            self.ids = torch.cat([self.ids, new])
            with torch.no_grad():  # a slot not used yet has zero gradient and zero moments: safe to fill
                self.weight[start:start + len(new)] = self.embedding.weight[new]
        return F.embedding(self.slot[tokens], self.weight)

    @torch.no_grad()
    def write_back(self) -> None:
        self.embedding.weight[self.ids] = self.weight[:len(self.ids)]


def caption_tokens(tokenizer):
    """`tokenizer` with a memory: a run draws a few thousand distinct captions hundreds of thousands of
    times, and BPE-encoding them again cost about 5 % of a step."""
    cache: dict[str, torch.Tensor] = {}

    def tokens(captions: list[str]) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in cache]
        if new:
            cache.update(zip(new, tokenizer(new)))
        return torch.stack([cache[c] for c in captions])

    return tokens


@torch.no_grad()
def zero_shot_map(model, tokenizer, images: torch.Tensor, facts: list[Facts], classes: list[str],
                  template: str = "a photo of a {}.", batch_size: int = 256) -> float:
    """Multi-label zero-shot mAP (%): images ranked per class by cosine to the class prompt."""
    model.eval()
    text = F.normalize(model.encode_text(tokenizer([template.format(c) for c in classes])), dim=-1)
    feats = []
    for i in range(0, len(images), batch_size):
        feats.append(F.normalize(model.encode_image(normalise(images[i:i + batch_size])), dim=-1))
    scores = (torch.cat(feats) @ text.T).numpy()
    labels = np.array([[c in {o for o, _ in f.objects} for c in classes] for f in facts])
    return float(np.mean([average_precision(scores[:, k], labels[:, k]) for k in range(len(classes))
                          if labels[:, k].any()]) * 100)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / max(hits.sum(), 1))


def train_toy_clip(data_root: str | os.PathLike = "data/raw/toyclip-corpus",
                   out_path: str | os.PathLike = "assets/toyclip/wsss-toy-vit.pt",
                   settings: ToyClipTraining | None = None, *, eval_root: str | os.PathLike | None = None,
                   progress: bool = True) -> dict:
    """Train `settings.model_name` from scratch on the captions of the toy world at `data_root`; save fp16 weights.

    If `data_root` holds no toy world, the default corpus (`CORPUS`) is generated there first. Writes
    `out_path` (an open_clip state dict in fp16, loadable with `load_clip(model_name, out_path)`) and
    `out_path` with suffix `.json` (config, training parameters, metrics), both atomically. `eval_root`
    (a toy world with a `val` split) adds its zero-shot mAP to the metrics. Returns the metrics.
    """
    cfg = settings or ToyClipTraining()
    clock = (time.perf_counter(), time.process_time())
    torch.set_num_threads(cfg.num_threads)
    keep_freed_memory()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    data_root, out_path = Path(data_root), Path(out_path)
    ensure_corpus(data_root, progress)
    corpus = _Corpus(*load_corpus(data_root, cfg.split, cfg.max_images)[:3])
    model_cfg = _check_image_size(corpus, cfg.model_name, data_root)
    run = _new_run(cfg, len(corpus.facts))
    history, losses = _train_loop(run, corpus, cfg, rng, clock[0], progress)
    metrics = _metrics(run, cfg, len(corpus.facts), losses, clock)
    if eval_root is not None:
        metrics["val_zero_shot_map"] = _zero_shot_val(run, Path(eval_root))
    _save(run.model, out_path, _sidecar(cfg, model_cfg, data_root, len(corpus.facts), metrics, history))
    return metrics


@dataclass
class _Corpus:
    images: torch.Tensor  # uint8 N×3×H×W
    facts: list[Facts]
    boxes: np.ndarray  # N×4 union boxes


@dataclass
class _Run:
    """The model being trained and what trains it."""

    model: torch.nn.Module
    tokenizer: Callable
    tokenize_captions: Callable[[list[str]], torch.Tensor]
    rows: TokenRows | None
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    total: int  # steps


def ensure_corpus(data_root: Path, progress: bool) -> None:
    """Generate the default corpus (`CORPUS`) where there is no toy world; warn when one drawn otherwise is there."""
    if not (data_root / "Annotations").is_dir():
        from wsss.toyworld import generate_toyworld

        log.info("no toy world at %s: generating the CLIP corpus %s", data_root, CORPUS)
        generate_toyworld(data_root, **CORPUS, progress=progress)
    elif differs := drawn_otherwise(data_root, **CORPUS):
        log.warning("%s was drawn with %s, not as the default corpus: the model will differ from the "
                    "shipped one (delete the folder to regenerate it)", data_root, differs)


def _check_image_size(corpus: _Corpus, model_name: str, data_root: Path) -> dict:
    """The model's open_clip config, after checking that the corpus is drawn at the model's input size."""
    from wsss.clip.model import clip_config, register_configs

    register_configs()
    model_cfg = clip_config(model_name)
    size = model_cfg["vision_cfg"]["image_size"]
    if corpus.images.shape[-1] != size or corpus.images.shape[-2] != size:
        raise DataError(f"{data_root}: images are {tuple(corpus.images.shape[-2:])}, model {model_name} wants {size}")
    return model_cfg


def _new_run(cfg: ToyClipTraining, n: int) -> _Run:
    """A fresh model (token embedding frozen: fixed random vectors, or `TokenRows` trained), AdamW with
    decay on matrices only, and a linear-warmup cosine schedule over the run's steps."""
    import open_clip

    model = open_clip.create_model(cfg.model_name, pretrained=None)
    tokenizer = open_clip.get_tokenizer(cfg.model_name)
    tokenize_captions = caption_tokens(tokenizer)
    model.train()
    model.token_embedding.requires_grad_(False)
    rows = None if cfg.freeze_token_embedding else TokenRows(model.token_embedding)
    total = max(1, int(round(cfg.epochs * max(n // cfg.batch_size, 1))))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = max(1, int(cfg.warmup_frac * total))
    groups = _param_groups(model, cfg.weight_decay, rows)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1))))
    return _Run(model, tokenizer, tokenize_captions, rows, [p for g in groups for p in g["params"]], opt, sched, total)


def _train_loop(run: _Run, corpus: _Corpus, cfg: ToyClipTraining, rng: np.random.Generator, t_start: float,
                progress: bool) -> tuple[list[dict], list[float]]:
    """Every step on a batch drawn without replacement (reshuffled each pass); returns the logged history
    (every `log_every` steps) and every step's loss."""
    n = len(corpus.facts)
    history: list[dict] = []
    losses: list[float] = []
    perm, pos = rng.permutation(n), 0
    bar = tqdm(range(run.total), desc="train toy CLIP", unit="step", disable=not progress)
    for step in bar:
        if pos + cfg.batch_size > n:
            perm, pos = rng.permutation(n), 0
        idx = perm[pos:pos + min(cfg.batch_size, n)]
        pos += len(idx)
        loss = _loss(run, corpus, idx, cfg, rng)
        _optimise(run, loss)
        losses.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == run.total:
            rec = {"step": step + 1, "loss": float(np.mean(losses[-cfg.log_every:])), "lr": run.sched.get_last_lr()[0],
                   "logit_scale": float(run.model.logit_scale.detach().exp()),
                   "seconds": round(time.perf_counter() - t_start, 1)}
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", scale=f"{rec['logit_scale']:.1f}")
            log.info("step %d/%d loss %.4f cfg.lr %.2e scale %.1f", step + 1, run.total, rec["loss"], rec["lr"],
                     rec["logit_scale"])
    bar.close()
    if run.rows is not None:
        run.rows.write_back()
    run.model.eval()
    return history, losses


def _loss(run: _Run, corpus: _Corpus, idx: np.ndarray, cfg: ToyClipTraining, rng: np.random.Generator) -> torch.Tensor:
    """One batch's loss: augmented images (as 2×2 mosaics, or with pasted regions) against drawn captions;
    contrastive on the tile and value-path embeddings, plus the affinity and paste-consistency terms."""
    model = run.model
    x = augment(corpus.images[idx], corpus.boxes[idx], rng, p_crop=cfg.p_crop)
    caps = [make_caption(corpus.facts[i], rng, p_background=cfg.p_background, p_colour=cfg.p_colour,
                         p_partial=cfg.p_partial) for i in idx]
    fits = fit_matrix([corpus.facts[i] for i in idx], [c[1] for c in caps])
    tokens = run.tokenize_captions([c[0] for c in caps])
    k = 2 if len(idx) % 4 == 0 and rng.random() < cfg.p_mosaic else 1
    m = int(cfg.paste_fraction * len(idx)) if k == 1 else 0
    if m:
        pasted, where = paste(x[:m], x[m:2 * m], model.visual.patch_size[0], rng)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        inputs = torch.cat([x, pasted]) if m else (mosaic(x, k) if k > 1 else x)
        a_imgs = (cfg.affinity_images // (k * k) or 1) if cfg.affinity_weight > 0 else 0  # clean images or mosaics
        z, values, attn = image_tokens(model.visual, inputs, a_imgs)
        if m:
            z, values, z_pasted = z[:len(idx)], values[:len(idx)], z[len(idx):]
        img = tile_embeddings(model.visual, z, k)
        val = value_embeddings(model.visual, values, k) if cfg.value_weight > 0 else None
        txt = text_embeddings(model, tokens, run.rows)
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    scale = model.logit_scale.exp()
    loss = multi_positive_loss(scale * img @ txt.T, fits)
    if attn is not None:
        loss = loss + cfg.affinity_weight * affinity_loss(attn, z[:a_imgs], cfg.affinity_tau)
    if m:
        loss = loss + cfg.paste_weight * paste_consistency(z, z_pasted, where)
    if val is not None:
        loss = loss + cfg.value_weight * multi_positive_loss(scale * F.normalize(val.float(), dim=-1) @ txt.T, fits)
    return loss


def _optimise(run: _Run, loss: torch.Tensor) -> None:
    """Backward, clip the gradient's norm at 1, step AdamW and the schedule; the logit scale stays ≤ 100."""
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.opt.step()
    run.sched.step()
    with torch.no_grad():
        run.model.logit_scale.clamp_(0, math.log(100))


def _metrics(run: _Run, cfg: ToyClipTraining, n: int, losses: list[float], clock: tuple[float, float]) -> dict:
    return {
        "steps": run.total,
        "samples_seen": run.total * min(cfg.batch_size, n),
        "first_loss": float(np.mean(losses[:min(cfg.log_every, len(losses))])),
        "final_loss": float(np.mean(losses[-min(cfg.log_every, len(losses)):])),
        "logit_scale": float(run.model.logit_scale.detach().exp()),
        "train_seconds": round(time.perf_counter() - clock[0], 1),
        "train_cpu_seconds": round(time.process_time() - clock[1], 1),
    }


def _zero_shot_val(run: _Run, eval_root: Path) -> float:
    """Zero-shot mAP (%) on the `val` split of the toy world at `eval_root`."""
    from wsss.data.vocab import Vocabulary

    classes = list(Vocabulary.from_file(eval_root / "classes.txt").names)
    v_images, v_facts, _, _ = load_corpus(eval_root, "val")
    value = round(zero_shot_map(run.model, run.tokenizer, v_images, v_facts, classes), 2)
    log.info("zero-shot mAP on %s val: %.2f", eval_root, value)
    return value


def _sidecar(cfg: ToyClipTraining, model_cfg: dict, data_root: Path, n: int, metrics: dict,
             history: list[dict]) -> dict:
    """What the weights are and how they were made: config, corpus, settings, metrics, versions."""
    import open_clip

    stats = data_root / "stats.json"
    return {
        "model": cfg.model_name,
        "config": model_cfg,
        "format": "open_clip state_dict, fp16",
        "corpus": {"root": str(data_root), "split": cfg.split, "images": n,
                   "generator": json.loads(stats.read_text()) if stats.exists() else None},
        "params": cfg.as_dict(),
        "metrics": metrics,
        "history": history,
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "python": platform.python_version()},
    }


def _save(model: torch.nn.Module, out_path: Path, sidecar: dict) -> None:
    """The fp16 state dict, then its sidecar, each atomically."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    with atomic_path(out_path) as tmp:
        torch.save(state, tmp)
    write_json(out_path.with_suffix(".json"), sidecar)
