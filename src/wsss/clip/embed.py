"""CLIP's global image embedding of an image at its native patch grid, differentiable.

Two read-outs of the last block's tokens after `ln_post` and the projection:
- `cls`: the class token — what `encode_image` returns for OpenAI's CLIP (open_clip pool type `tok`), and
  what SemPLeS embeds its masked crops with;
- `patch_mean`: the mean of the patch tokens — what CLIP-ES scores images with (`wsss.clip.dense`), and
  what the toy CLIP is trained with (its pool type `avg`), so its class token carries little meaning.

Unlike `DenseViT.encode` this runs each block's own `forward` and keeps the graph, so a loss on the
embedding reaches the pixels: SemPLeS's refinement back-propagates through it into the segmenter's
predicted regions (`wsss.seg.refine`). The positional-embedding grid is interpolated to the input's grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

READ_OUTS = ("cls", "patch_mean")


def final_tokens(visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised pixels [B, 3, H, W] (H, W multiples of the patch size) → the last block's tokens after
    `ln_post`, [B, 1 + h·w, D] (class token first), through each block's own `forward` (graph kept)."""
    from wsss.clip.dense import _pair, embed_tokens, interpolate_pos_embed

    src = _pair(visual.grid_size)
    x = embed_tokens(visual, pixels, lambda h, w: interpolate_pos_embed(visual.positional_embedding, src, (h, w)))
    batch_first = getattr(visual.transformer, "batch_first", True)
    x = x if batch_first else x.transpose(0, 1)
    for block in visual.transformer.resblocks:
        x = block(x)
    x = x if batch_first else x.transpose(0, 1)
    return visual.ln_post(x)


def image_embedding(visual: nn.Module, pixels: torch.Tensor, read_out: str = "cls") -> torch.Tensor:
    """Normalised pixels [B, 3, H, W] (H, W multiples of the patch size) → L2-normalised embeddings [B, E]."""
    if read_out not in READ_OUTS:
        raise ValueError(f"read_out must be one of {READ_OUTS}, got {read_out!r}")
    x = final_tokens(visual, pixels)
    pooled = x[:, 0] if read_out == "cls" else x[:, 1:].mean(dim=1)
    proj = visual.proj
    pooled = pooled if proj is None else pooled @ proj
    return F.normalize(pooled.float(), dim=-1)
