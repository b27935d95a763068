"""Dense forward of an open_clip ViT at the image's native aspect (docs/method.md §2–3).

The image is resized *up* to multiples of the patch size, the positional-embedding grid is interpolated
to the patch grid, and the blocks run through their own submodules (the model is neither modified nor
copied): blocks 1..L-1 without gradients, the last one with a gradient leaf on its ln_1 output (the
GradCAM activation). The head-averaged self-attention of the last `n` blocks is computed from each block's
own in_proj q/k and accumulated in place into one N×N buffer per image, query rows in chunks, so eight
N×N matrices are never alive at once.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from wsss.errors import ConfigError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
NUM_PREFIX = 1  # the CLS token
MIN_CHUNK_ELEMS = 1 << 20  # attention logits computed at once: max(N²/16, 2^20) (4 MiB in fp32) on CPU,
MIN_CHUNK_ELEMS_GPU = 1 << 24  # max(N²/16, 2^24) (64 MiB) on GPU, where fewer, larger kernels pay
MLP_CHUNK_BYTES = 32 << 20  # MLP activations of all tokens at once up to this (ViT-B: ~2700 tokens)


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


def embed_tokens(visual: nn.Module, pixels: torch.Tensor,
                 pos_embed: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """[B, 3, H', W'] → tokens [B, 1 + h·w, D]: patch embedding, CLS, `pos_embed(h, w)`, ln_pre.

    The positional embedding comes from the caller: cached and frozen for CAMs (`DenseViT`), live and
    trainable when the toy CLIP trains on mosaics (`wsss.toyclip.train`)."""
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))
    bsz, dim, h, w = x.shape
    x = x.reshape(bsz, dim, h * w).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, dim).expand(bsz, -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + pos_embed(h, w).to(x.dtype)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x)


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
    min_chunk = MIN_CHUNK_ELEMS if z.device.type == "cpu" else MIN_CHUNK_ELEMS_GPU
    budget = chunk_elems or max(min_chunk, length * length // 16)
    rows = max(1, min(n, budget // (heads * length)))
    images = max(1, budget // (heads * length * n)) if rows == n else 1  # small images: several at once
    scale = weight / heads
    kt = k.transpose(-1, -2)
    for i0 in range(0, bsz, images):
        i1 = min(bsz, i0 + images)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            logits = torch.matmul(q[i0:i1, :, num_prefix + r0:num_prefix + r1], kt[i0:i1]).float()  # [b, H, r, L]
            probs = torch.softmax(logits, dim=-1)
            del logits
            out[i0:i1, r0:r1].add_(probs[..., num_prefix:].sum(1), alpha=scale)
            del probs
    return out


def _pair(x) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, np.integer)) else (int(x[0]), int(x[1]))


class DenseViT:
    """Runs an open_clip `VisionTransformer` (`model.visual`) densely at native aspect; holds no copy of it.

    Each block runs through its own submodules, in the order of open_clip's `ResidualAttentionBlock`:
    x ← x + ls_1(attn(ln_1(x))), then x ← x + ls_2(mlp(ln_2(x))). The per-token half (ln_2, MLP) runs over
    token chunks, in place, so the 4·D-wide MLP activations of all N tokens never exist at once; the
    attention half keeps ln_1(x) in hand, which is where the CAA attention is computed (from the block's own
    in_proj q/k) and where GradCAM's gradient leaf sits.

    `attn_layers`: how many of the last blocks' attention maps CAA averages (8 in CLIP-ES, clipped to L).
    `token_chunk`: tokens per MLP chunk (None: `token_slices`' rule).
    """

    def __init__(self, visual: nn.Module, attn_layers: int = 8, pos_embed_fp16: bool = False,
                 chunk_elems: int | None = None, token_chunk: int | None = None):
        _check_supported(visual)
        self.visual = visual
        self.blocks = list(visual.transformer.resblocks)
        self.attn_layers = max(0, min(int(attn_layers), len(self.blocks)))
        self.patch_size = _pair(visual.patch_size)
        self.src_grid = _pair(visual.grid_size)
        self.pos_embed_fp16 = pos_embed_fp16
        self.chunk_elems = chunk_elems
        self.token_chunk = token_chunk
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
        return embed_tokens(self.visual, pixels, self.pos_embed)

    # ---- block halves -----------------------------------------------------------------------------------
    def attention_half(self, block: nn.Module, x: torch.Tensor, z: torch.Tensor | None = None,
                       attn_out: torch.Tensor | None = None, capture_rows: int | None = None) -> torch.Tensor:
        """x + ls_1(attn(ln_1(x))) for batch-first x [B, L, D]; `z` overrides ln_1(x) (the gradient leaf).
        With `attn_out`, adds the block's head-averaged patch attention (first `capture_rows` images)."""
        if z is None:
            z = block.ln_1(x)
        if attn_out is not None:
            with torch.no_grad():
                zc = z if capture_rows is None else z[:capture_rows]
                accumulate_attention(block.attn, zc.detach(), attn_out, chunk_elems=self.chunk_elems)
        zt = z if block.attn.batch_first else z.transpose(0, 1)
        # key/value as a view, not the query object itself: this keeps nn.MultiheadAttention off its inference
        # fast path (`torch._native_multi_head_attention`), which on CPU materialises every head's N×N
        # attention (805 MiB per block at 1024²), and on its regular path, which calls
        # scaled_dot_product_attention (flash kernels, O(N) memory, as fast). Same q, k, v, same weights.
        kv = zt.view_as(zt)
        a = block.attn(zt, kv, kv, need_weights=False)[0]
        if not block.attn.batch_first:
            a = a.transpose(0, 1)
        return x + block.ls_1(a)

    @staticmethod
    def mlp_half(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x + ls_2(mlp(ln_2(x))): per token, so it can run on any slice of the tokens."""
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def token_slices(self, length: int) -> list[slice]:
        """Token chunks for the per-token half: all tokens at once while the 4·D-wide MLP activations stay
        under MLP_CHUNK_BYTES, else max(256, ⌈L/8⌉) tokens (or `token_chunk`)."""
        width = self.visual.conv1.out_channels
        if self.token_chunk:
            step = self.token_chunk
        elif 4 * width * length * 4 <= MLP_CHUNK_BYTES:
            step = length
        else:
            step = max(256, -(-length // 8))
        return [slice(s, min(length, s + step)) for s in range(0, length, step)]

    def run_block(self, block: nn.Module, x: torch.Tensor, attn_out: torch.Tensor | None = None) -> torch.Tensor:
        """One block without gradients; the MLP half in place over token chunks."""
        with torch.no_grad():
            x = self.attention_half(block, x, attn_out=attn_out)
            slices = self.token_slices(x.shape[1])
            if len(slices) == 1:
                return self.mlp_half(block, x)
            for sl in slices:
                x[:, sl] = self.mlp_half(block, x[:, sl])
        return x

    def trunk(self, pixels: torch.Tensor, attn_out: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks 1..L-1 without gradients; returns the last block's input [B, 1+N, D] (batch-first).

        With `attn_out` ([B, N, N], fp32), adds the head-averaged patch attention of the captured blocks
        among 1..L-1 to it (the last block's own is added by `attention_half` of the last block).
        """
        first_captured = len(self.blocks) - self.attn_layers
        with torch.no_grad():
            x = self.embed(pixels)
            for i, block in enumerate(self.blocks[:-1]):
                x = self.run_block(block, x, attn_out if attn_out is not None and i >= first_captured else None)
        return x

    @property
    def last(self) -> nn.Module:
        return self.blocks[-1]

    # ---- output side ------------------------------------------------------------------------------------
    def pooled_sum(self, out_tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Σ over the patch tokens among `out_tokens` (token offset `start`) of ln_post(token) → [B, D]."""
        skip = max(0, NUM_PREFIX - start)
        return self.visual.ln_post(out_tokens[:, skip:]).sum(dim=1)

    def project(self, pooled_sum: torch.Tensor, n_patches: int) -> torch.Tensor:
        """Mean of the patch tokens → projection; unnormalised [B, E]."""
        x = pooled_sum / n_patches
        proj = self.visual.proj
        return x if proj is None else x @ proj

    def embedding_from_mid(self, y: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embedding [B, E] from the last block's attention-half output y, no grad:
        MLP half, ln_post, mean of patch tokens, projection, token chunk by token chunk."""
        with torch.no_grad():
            total = 0
            for sl in self.token_slices(y.shape[1]):
                total = total + self.pooled_sum(self.mlp_half(self.last, y[:, sl]), sl.start)
            return self.project(total, y.shape[1] - NUM_PREFIX)

    def forward_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """All blocks, no gradients: output tokens [B, 1+N, D] (before ln_post)."""
        with torch.no_grad():
            return self.run_block(self.last, self.trunk(pixels))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embedding [B, E] (ln_post, mean of patch tokens, proj), no gradients."""
        with torch.no_grad():
            y = self.attention_half(self.last, self.trunk(pixels))
            return F.normalize(self.embedding_from_mid(y).float(), dim=-1)


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
