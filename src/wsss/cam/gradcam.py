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


def gradcam_maps(activations: torch.Tensor, grads: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """CAM_k = min-max(ReLU(Σ_d w_kd A_d)), w_kd = spatial mean of ∂prob_k/∂A_d.

    activations [N, D], grads [K, N, D] (patch tokens only) → [K, h, w].
    """
    weights = grads.float().mean(dim=1)  # [K, D]
    cam = torch.relu(weights @ activations.float().T)  # [K, N]
    return minmax_normalize(cam.view(-1, *grid))


def softmax_gradcam(dense: DenseViT, x_last: torch.Tensor, grid: tuple[int, int], class_text: torch.Tensor,
                    bg_text: torch.Tensor, logit_scale: float | torch.Tensor, attn_out: torch.Tensor | None = None,
                    mode: str = "vmap") -> GradCamResult:
    """GradCAM maps of the K present classes of one image.

    x_last: the last block's input [1, 1+N, D] (`DenseViT.trunk`); class_text [K, E] the present classes'
    embeddings, bg_text [B, E] the background embeddings (both L2-normalised). If `attn_out` ([1, N, N]) is
    given, the last block's attention is added to it from this same pass.
    """
    if x_last.shape[0] != 1:
        raise ValueError("softmax_gradcam takes one image; loop over a batch's images")
    k = class_text.shape[0]
    texts = torch.cat([class_text, bg_text]).float()
    with torch.enable_grad():
        if mode == "vmap":
            z, tokens = dense.last_block(x_last, attn_out=attn_out, grad=True)
            probs = class_probs(dense.pool(tokens), texts, logit_scale)  # [1, K + B]
            one_hot = torch.eye(k, texts.shape[0], device=probs.device, dtype=probs.dtype)[:, None]  # [K, 1, T]
            (grads,) = torch.autograd.grad(probs, z, grad_outputs=one_hot, is_grads_batched=True)
            grads = dense.leaf_batch_first(grads)[:, 0]  # [K, 1+N, D]
        elif mode == "replicate":
            z, tokens = dense.last_block(x_last.expand(k, -1, -1), attn_out=attn_out, grad=True, capture_rows=1)
            probs = class_probs(dense.pool(tokens), texts, logit_scale)  # [K, K + B], rows identical
            (grads,) = torch.autograd.grad(probs[:, :k].diagonal().sum(), z)
            grads = dense.leaf_batch_first(grads)  # [K, 1+N, D]
        else:
            raise ValueError(f"mode must be 'vmap' or 'replicate', got {mode!r}")
    acts = dense.leaf_batch_first(z.detach())[0, NUM_PREFIX:]
    cam = gradcam_maps(acts, grads[:, NUM_PREFIX:], grid)
    return GradCamResult(cam.detach(), probs[0].detach().float())
