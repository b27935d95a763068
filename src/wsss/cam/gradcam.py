"""Softmax-GradCAM (CLIP-ES, method.md §2), all present classes in one gradient pass.

The target for class k is its softmax probability over [present classes] ∪ [background texts]; the
activation is the last block's ln_1 output (patch tokens). The reference re-runs the last block and does
one backward per class. Here the last block runs once and the K backward passes are batched: either
vectorised over K one-hot cotangents (`mode="vmap"`, autograd's `is_grads_batched`), or by replicating
the block input K times along the batch and summing each copy's own target (`mode="replicate"`). Both
give the per-class gradients of the reference (tests/test_cam_reference.py checks ≤ 1e-5 in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wsss.clip.dense import NUM_PREFIX, DenseViT

EPS = 1e-7


@dataclass
class GradCamResult:
    cam_grid: torch.Tensor  # [K, h, w] fp32, ReLU + min-max normalised
    probs: torch.Tensor  # [K + B] fp32 softmax over present classes then background texts


def class_probs(image_emb: torch.Tensor, texts: torch.Tensor, logit_scale: float | torch.Tensor) -> torch.Tensor:
    """softmax(exp(logit_scale)·cos(image, text)) over the text set; `logit_scale` is already exp()'d."""
    image_emb = F.normalize(image_emb.float(), dim=-1)
    return (logit_scale * image_emb @ texts.float().T).softmax(dim=-1)


def minmax_normalize(maps: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per map over its last two dims: m − min, then / (max + eps) (pytorch-grad-cam's `scale_cam_image`)."""
    flat = maps.flatten(-2)
    flat = flat - flat.amin(dim=-1, keepdim=True)
    flat = flat / (flat.amax(dim=-1, keepdim=True) + eps)
    return flat.view_as(maps)


def gradcam_maps(activations: torch.Tensor, weights: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """CAM_k = min-max(ReLU(Σ_d w_kd A_d)); activations [N, D] (patch tokens), weights [K, D] → [K, h, w].

    w_kd is the spatial mean of ∂prob_k/∂A_d over the patch tokens.
    """
    weights = weights.float()
    cam = torch.relu(weights @ activations.float().T)  # [K, N]
    return minmax_normalize(cam.view(-1, *grid))


def auto_class_chunk(n_tokens: int, width: int, budget_bytes: int | None = None) -> int:
    """Classes per batched backward: each costs ~12·N·D fp32 values of gradient buffers, so cap the batch
    at max(256 MiB, one N×N fp32 matrix): VOC-size images take all classes at once, large images one at a
    time, and memory stops growing with the number of classes."""
    budget = budget_bytes or max(256 << 20, 4 * n_tokens * n_tokens)
    return max(1, budget // (12 * 4 * n_tokens * width))


def softmax_gradcam(dense: DenseViT, x_last: torch.Tensor, grid: tuple[int, int], class_text: torch.Tensor,
                    bg_text: torch.Tensor, logit_scale: float | torch.Tensor, attn_out: torch.Tensor | None = None,
                    mode: str = "vmap", class_chunk: int | None = None) -> GradCamResult:
    """GradCAM maps of the K present classes of one image.

    x_last: the last block's input [1, 1+N, D] (`DenseViT.trunk`); class_text [K, E] the present classes'
    embeddings, bg_text [B, E] the background embeddings (both L2-normalised). If `attn_out` ([1, N, N]) is
    given, the last block's attention is added to it from this same pass. `class_chunk` bounds how many
    classes share one batched backward (None: `auto_class_chunk`).
    """
    if x_last.shape[0] != 1:
        raise ValueError("softmax_gradcam takes one image; loop over a batch's images")
    k = class_text.shape[0]
    n_tokens, width = x_last.shape[1], x_last.shape[2]
    chunk = max(1, min(k, class_chunk or auto_class_chunk(n_tokens, width)))
    texts = torch.cat([class_text, bg_text]).float()
    grads = []
    with torch.enable_grad():
        if mode == "vmap":
            z, tokens = dense.last_block(x_last, attn_out=attn_out, grad=True)
            probs = class_probs(dense.pool(tokens), texts, logit_scale)  # [1, K + B]
            one_hot = torch.eye(k, texts.shape[0], device=probs.device, dtype=probs.dtype)[:, None]  # [K, 1, T]
            for c0 in range(0, k, chunk):
                (g,) = torch.autograd.grad(probs, z, grad_outputs=one_hot[c0:c0 + chunk], is_grads_batched=True,
                                           retain_graph=c0 + chunk < k)
                grads.append(dense.leaf_batch_first(g)[:, 0, NUM_PREFIX:].mean(dim=1))  # [c, D]
            acts = dense.leaf_batch_first(z.detach())[0, NUM_PREFIX:]
        elif mode == "replicate":
            for c0 in range(0, k, chunk):
                c = min(chunk, k - c0)
                z, tokens = dense.last_block(x_last.expand(c, -1, -1), attn_out=attn_out if c0 == 0 else None,
                                             grad=True, capture_rows=1)
                probs = class_probs(dense.pool(tokens), texts, logit_scale)  # [c, K + B], rows identical
                (g,) = torch.autograd.grad(probs[:, c0:c0 + c].diagonal().sum(), z)
                grads.append(dense.leaf_batch_first(g)[:, NUM_PREFIX:].mean(dim=1))  # [c, D]
                acts = dense.leaf_batch_first(z.detach())[0, NUM_PREFIX:]
        else:
            raise ValueError(f"mode must be 'vmap' or 'replicate', got {mode!r}")
    cam = gradcam_maps(acts, torch.cat(grads), grid)
    return GradCamResult(cam.detach(), probs[0].detach().float())
