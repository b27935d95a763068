"""Dense forward of an open_clip ViT at the image's native aspect (method.md §2–3).

The image is resized *up* to multiples of the patch size, the positional-embedding grid is interpolated
to the patch grid, blocks 1..L-1 run without gradients, and the last block can be re-run with a gradient
leaf on its ln_1 output (the GradCAM activation). The head-averaged self-attention of the last `n` blocks
is computed from each block's own q/k weights by a forward pre-hook on its attention module: the model is
neither modified nor copied, and the average is accumulated in place into one N×N buffer per image,
query rows in chunks, so eight N×N matrices are never alive at once.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from wsss.errors import ConfigError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
NUM_PREFIX = 1  # the CLS token
MIN_CHUNK_ELEMS = 1 << 20  # attention logits computed at once: max(N²/16, 2^20) (4 MiB in fp32)


def image_mean_std(visual: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation constants of the vision tower (open_clip's preprocess_cfg), OpenAI CLIP's otherwise."""
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_MEAN
    std = cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_STD
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def padded_size(width: int, height: int, patch_size: int | Sequence[int]) -> tuple[int, int]:
    """(width, height) rounded *up* to multiples of the patch size (the reference never crops)."""
    ph, pw = _pair(patch_size)
    return math.ceil(width / pw) * pw, math.ceil(height / ph) * ph


def preprocess(image: Image.Image, patch_size: int | Sequence[int], mean: Sequence[float] = OPENAI_MEAN,
               std: Sequence[float] = OPENAI_STD) -> torch.Tensor:
    """PIL image → normalised float32 tensor [3, H', W'] at H', W' = size rounded up to multiples of p.

    Same arithmetic as the reference's torchvision `Resize((H', W'), BICUBIC)` on a PIL image (PIL bicubic),
    `ToTensor` (uint8 / 255) and `Normalize` (subtract mean, divide by std), in that order.
    """
    image = image.convert("RGB")
    size = padded_size(image.width, image.height, patch_size)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    x = x.to(torch.float32).div(255)
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def interpolate_pos_embed(pos_embed: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int],
                          num_prefix: int = NUM_PREFIX, fp16_quirk: bool = False) -> torch.Tensor:
    """Positional embedding [prefix + gh·gw, D] resized to the grid `dst_grid` = (h, w).

    Bilinear, align_corners=False, the prefix (CLS) rows unchanged, as the reference's `upsample_pos_emb`.
    `fp16_quirk` rounds the result to fp16 and back like the reference code does even in fp32.
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if src_grid != dst_grid:
        prefix, grid = pos_embed[:num_prefix], pos_embed[num_prefix:]
        dim = grid.shape[-1]
        if grid.shape[0] != src_grid[0] * src_grid[1]:
            raise ValueError(f"positional embedding has {grid.shape[0]} grid rows, expected {src_grid}")
        grid = grid.reshape(1, src_grid[0], src_grid[1], dim).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=dst_grid, mode="bilinear", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(-1, dim).to(pos_embed.dtype)
        pos_embed = torch.cat([prefix, grid], dim=0)
    if fp16_quirk:
        pos_embed = pos_embed.half().to(pos_embed.dtype)
    return pos_embed


def accumulate_attention(attn: nn.MultiheadAttention, z: torch.Tensor, out: torch.Tensor, weight: float = 1.0,
                         num_prefix: int = NUM_PREFIX, chunk_elems: int | None = None) -> torch.Tensor:
    """out[b] += weight · mean_heads softmax(q kᵀ/√d_head)[patch queries, patch keys], in place.

    `z` is the attention's input, batch-first [B, L, D]; q and k come from the module's own packed in_proj
    weights exactly as `nn.MultiheadAttention(need_weights=True)` computes them (the softmax runs over all
    keys, CLS included, before the CLS row and column are dropped). Query rows are processed in chunks of
    at most `chunk_elems` logits, so the extra memory stays a fraction of one N×N matrix. Computed in the
    input's dtype, softmax and accumulation in fp32.
    """
    bsz, length, dim = z.shape
    heads = attn.num_heads
    head_dim = dim // heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(z, w[:dim], None if b is None else b[:dim])
    k = F.linear(z, w[dim:2 * dim], None if b is None else b[dim:2 * dim])
    q = q.view(bsz, length, heads, head_dim).transpose(1, 2) * math.sqrt(1.0 / head_dim)  # [B, H, L, dh]
    k = k.view(bsz, length, heads, head_dim).transpose(1, 2)
    n = length - num_prefix
    budget = chunk_elems or max(MIN_CHUNK_ELEMS, length * length // 16)
    rows = max(1, min(n, budget // (heads * length)))
    scale = weight / heads
    for i in range(bsz):
        kt = k[i].transpose(-1, -2)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            logits = torch.matmul(q[i, :, num_prefix + r0:num_prefix + r1], kt).float()  # [H, r, L]
            probs = torch.softmax(logits, dim=-1)
            del logits
            out[i, r0:r1].add_(probs[..., num_prefix:].sum(0), alpha=scale)
            del probs
    return out


@contextlib.contextmanager
def sdpa_attention() -> Iterator[None]:
    """Keep nn.MultiheadAttention off its inference fast path while we run blocks.

    On CPU the fast path (`torch._native_multi_head_attention`) materialises every head's N×N attention
    (12 N² floats: 805 MiB per block at a 1024² image), while the regular path calls
    `scaled_dot_product_attention` (flash kernels, O(N) memory) and is as fast or faster. A process-wide
    switch, restored on exit; the model itself is not touched.
    """
    backend = torch.backends.mha
    previous = backend.get_fastpath_enabled()
    backend.set_fastpath_enabled(False)
    try:
        yield
    finally:
        backend.set_fastpath_enabled(previous)


def _pair(x) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, np.integer)) else (int(x[0]), int(x[1]))


def _mha_query(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["query"]


class DenseViT:
    """Runs an open_clip `VisionTransformer` (`model.visual`) densely at native aspect; holds no copy of it.

    `attn_layers`: how many of the last blocks' attention maps CAA averages (method.md: 8, clipped to L).
    """

    def __init__(self, visual: nn.Module, attn_layers: int = 8, pos_embed_fp16: bool = False,
                 chunk_elems: int | None = None):
        _check_supported(visual)
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)
        self.attn_layers = max(0, min(int(attn_layers), len(self.blocks)))
        self.patch_size = _pair(visual.patch_size)
        self.src_grid = _pair(visual.grid_size)
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.pos_embed_fp16 = pos_embed_fp16
        self.chunk_elems = chunk_elems
        self._pos_cache: dict = {}

    # ---- input side -------------------------------------------------------------------------------------
    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (h, w) of a preprocessed image of height × width pixels."""
        return height // self.patch_size[0], width // self.patch_size[1]

    def pos_embed(self, h: int, w: int) -> torch.Tensor:
        pos = self.visual.positional_embedding
        key = (h, w, pos.device, pos.dtype, pos.data_ptr(), pos._version)
        if key not in self._pos_cache:
            self._pos_cache = {key: interpolate_pos_embed(pos.detach(), self.src_grid, (h, w),
                                                          fp16_quirk=self.pos_embed_fp16)}
        return self._pos_cache[key]

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H', W'] → tokens [B, 1 + h·w, D] (patch embedding, CLS, positional embedding, ln_pre)."""
        v = self.visual
        x = v.conv1(pixels.to(v.conv1.weight.dtype))
        bsz, dim, h, w = x.shape
        x = x.reshape(bsz, dim, h * w).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, dim).expand(bsz, -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.pos_embed(h, w).to(x.dtype)
        x = v.patch_dropout(x)
        return v.ln_pre(x)

    # ---- blocks -----------------------------------------------------------------------------------------
    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    @contextlib.contextmanager
    def _hooks(self, blocks: Sequence[nn.Module], attn_out: torch.Tensor | None, grad_leaf: dict | None,
               capture_rows: int | None = None) -> Iterator[None]:
        """Pre-hooks on the blocks' attention modules: capture attention into `attn_out` (first
        `capture_rows` batch rows only, for replicated inputs) and/or swap the input for a gradient leaf."""

        def hook(mod, args, kwargs):
            query = _mha_query(args, kwargs)
            if attn_out is not None:
                zb = query if mod.batch_first else query.transpose(0, 1)
                if capture_rows is not None:
                    zb = zb[:capture_rows]
                with torch.no_grad():
                    accumulate_attention(mod, zb.detach(), attn_out, chunk_elems=self.chunk_elems)
            if grad_leaf is None:
                return None
            if not args or len(args) < 3 or not (args[1] is args[0] and args[2] is args[0]):
                raise ConfigError("open_clip attention block called without self-attention on one input; "
                                  "this vision tower is not supported")
            leaf = query.detach().requires_grad_(True)
            grad_leaf["z"] = leaf
            return (leaf, leaf, leaf) + tuple(args[3:]), kwargs

        handles = [b.attn.register_forward_pre_hook(hook, with_kwargs=True) for b in blocks]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def trunk(self, pixels: torch.Tensor, attn_out: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks 1..L-1 without gradients; returns the last block's input [B, 1+N, D] (batch-first).

        With `attn_out` ([B, N, N], fp32), adds the head-averaged patch attention of the captured blocks
        among 1..L-1 to it (the last block's own is added by `last_block`).
        """
        first_captured = len(self.blocks) - self.attn_layers
        with torch.no_grad(), sdpa_attention():
            x = self.embed(pixels)
            captured = self.blocks[first_captured:-1] if attn_out is not None else []
            with self._hooks(captured, attn_out, None):
                for block in self.blocks[:-1]:
                    x = self._run_block(block, x)
        return x

    def last_block(self, x: torch.Tensor, attn_out: torch.Tensor | None = None, grad: bool = False,
                   capture_rows: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Run the last block on its input `x` [B, 1+N, D].

        Returns (z, tokens): z is the gradient leaf standing for the block's ln_1 output, in the attention
        module's layout (`leaf_batch_first` turns it and its gradients batch-first; None without `grad`),
        tokens the block output [B, 1+N, D].
        """
        leaf: dict | None = {} if grad else None
        captured = [self.blocks[-1]] if attn_out is not None and self.attn_layers > 0 else []
        hooked = [self.blocks[-1]] if grad else captured
        with torch.set_grad_enabled(grad), sdpa_attention(), \
                self._hooks(hooked, attn_out if captured else None, leaf, capture_rows):
            tokens = self._run_block(self.blocks[-1], x)
        return (leaf["z"] if grad else None), tokens

    def leaf_batch_first(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor laid out like the attention input (the leaf, its gradients) → batch-first."""
        return t if self.batch_first else t.transpose(-3, -2)

    # ---- output side ------------------------------------------------------------------------------------
    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_post → mean of the patch tokens (not CLS) → projection; unnormalised [B, E]."""
        x = self.visual.ln_post(tokens)[:, NUM_PREFIX:].mean(dim=1)
        proj = self.visual.proj
        return x if proj is None else x @ proj

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embedding [B, E] (mean of patch tokens), no gradients."""
        with torch.no_grad():
            x = self.trunk(pixels)
            _, tokens = self.last_block(x)
            return F.normalize(self.pool(tokens).float(), dim=-1)


def _check_supported(visual: nn.Module) -> None:
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post", "transformer")
    if not all(hasattr(visual, a) for a in needed) or not hasattr(visual.transformer, "resblocks"):
        raise ConfigError(f"vision tower {type(visual).__name__} is not an open_clip VisionTransformer "
                          "(timm and ResNet towers are not supported)")
    if getattr(visual, "attn_pool", None) is not None:
        raise ConfigError("vision towers with an attentional pooler (CoCa) are not supported")
    for i, block in enumerate(visual.transformer.resblocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or not hasattr(block, "ln_1"):
            raise ConfigError(f"vision block {i} ({type(block).__name__}) has no nn.MultiheadAttention; "
                              "custom attention blocks (qk-norm, scaled cosine) are not supported")
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
            raise ConfigError(f"vision block {i}: unsupported nn.MultiheadAttention options")
