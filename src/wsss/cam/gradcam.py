"""Softmax-GradCAM (CLIP-ES, docs/method.md §2), all present classes in one gradient pass.

The target for class k is its softmax probability over [present classes] ∪ [background texts]; the
activation is the last block's ln_1 output (patch tokens). The reference re-runs the last block and does
one full backward per class. Here the last block runs forward once; the K classes differ only in the tiny
head, so their K cotangents are back-propagated together (autograd's `is_grads_batched`, i.e. vmap),
without parameter gradients. tests/test_cam_engine.py checks the maps equal the per-class reference
(≤ 1e-5 in fp32).
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
    """softmax(exp(logit_scale)·cos(image, text)) over the text set; `logit_scale` is already exp()'d.
    Always fp32, also under autocast (fp16 logits of ~100·cos would be off by a few percent)."""
    with torch.autocast(image_emb.device.type, enabled=False):
        image_emb = F.normalize(image_emb.float(), dim=-1)
        return (logit_scale * image_emb @ texts.float().T).softmax(dim=-1)


def minmax_normalize(maps: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per map over its last two dims: m − min, then / (max + eps) (pytorch-grad-cam's `scale_cam_image`)."""
    flat = maps.flatten(-2)
    flat = flat - flat.amin(dim=-1, keepdim=True)
    flat = flat / (flat.amax(dim=-1, keepdim=True) + eps)
    return flat.view_as(maps)


def gradcam_maps(activations: torch.Tensor, weights: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """CAM_k = min-max(min-max(ReLU(Σ_d w_kd A_d))); activations [N, D] (patch tokens), weights [K, D] →
    [K, h, w]; w_kd is the spatial mean of ∂prob_k/∂A_d over the patch tokens.

    Normalised twice, as the CLIP-ES code does (once per target layer, again after averaging the one
    layer): with eps = 1e-7 the second pass lifts the peak of a map whose raw maximum is small (a weak
    class, a small model) from max/(max + eps) back to ≈ 1, which moves the box threshold and the CAA input.
    """
    with torch.autocast(activations.device.type, enabled=False):
        cam = torch.relu(weights.float() @ activations.float().T)  # [K, N]
        return minmax_normalize(minmax_normalize(cam.view(-1, *grid)))


def auto_class_chunk(n_tokens: int, width: int, device: torch.device | str = "cpu") -> int:
    """Classes per batched backward. Each class in a backward holds ~8·N·D gradient values. On CPU one
    class at a time is as fast as a batch, so memory stays flat in the number of classes; on GPU batching
    helps small images, so classes share a backward up to max(256 MiB, one N×N fp32 matrix)."""
    if torch.device(device).type == "cpu":
        return 1
    budget = max(256 << 20, 4 * n_tokens * n_tokens)
    return max(1, budget // (8 * 4 * n_tokens * width))


def _mid_gradient(dense: DenseViT, y: torch.Tensor, g_e: torch.Tensor) -> torch.Tensor:
    """∂(g_e · e)/∂y for each cotangent row of g_e [c, 1, E]: back through the last block's MLP half,
    ln_post, patch mean and projection, token chunk by token chunk (these are per-token maps, so only one
    chunk's 4·D-wide activations are ever held). y [1, L, D] → [c, 1, L, D]."""
    c = g_e.shape[0]
    g_y = torch.zeros((c, *y.shape), dtype=y.dtype, device=y.device)
    n_patches = y.shape[1] - NUM_PREFIX
    for sl in dense.token_slices(y.shape[1]):
        y_c = y[:, sl].detach().requires_grad_(True)
        e_c = dense.project(dense.pooled_sum(dense.mlp_half(dense.last, y_c), sl.start), n_patches)
        g_y[:, :, sl] = _vjp(e_c, y_c, g_e, retain=False)
    return g_y


def softmax_gradcam(dense: DenseViT, x_last: torch.Tensor, grid: tuple[int, int], class_text: torch.Tensor,
                    bg_text: torch.Tensor, logit_scale: float | torch.Tensor, attn_out: torch.Tensor | None = None,
                    class_chunk: int | None = None) -> GradCamResult:
    """GradCAM maps of the K present classes of one image, from one forward of the last block.

    x_last: the last block's input [1, 1+N, D] (`DenseViT.trunk`); class_text [K, E] the present classes'
    embeddings, bg_text [B, E] the background embeddings (both L2-normalised). If `attn_out` ([1, N, N]) is
    given, the last block's attention is added to it from this same pass.

    ∂prob_k/∂e for all k comes from the small head at once; the K cotangents then go back through the block
    together — `class_chunk` classes per (batched) backward (None: `auto_class_chunk`; 1 = plain backward,
    no vmap). Small images keep one graph through the whole block. Large ones cut the chain z = ln_1(x) →
    y (attention half) → e (MLP half, ln_post, patch mean, proj): the cotangent is carried back through the
    per-token half in token chunks (recomputing their MLP), then through the attention half, so the 4·D-wide
    MLP activations of all N tokens are never held.
    """
    if x_last.shape[0] != 1:
        raise ValueError("softmax_gradcam takes one image; loop over a batch's images")
    k = class_text.shape[0]
    n_tokens, width = x_last.shape[1], x_last.shape[2]
    chunk = max(1, min(k, class_chunk or auto_class_chunk(n_tokens, width, x_last.device)))
    texts = torch.cat([class_text, bg_text]).float()
    single = len(dense.token_slices(n_tokens)) == 1  # small image: one graph through the whole block
    with torch.no_grad():
        z = dense.last.ln_1(x_last)
    z.requires_grad_(True)
    with torch.enable_grad():
        y = dense.attention_half(dense.last, x_last, z=z, attn_out=attn_out)
        if single:
            e_graph = dense.project(dense.pooled_sum(dense.mlp_half(dense.last, y), 0), n_tokens - NUM_PREFIX)
            e = e_graph.detach().float().requires_grad_(True)
        else:
            e = dense.embedding_from_mid(y.detach()).float().requires_grad_(True)
        probs = class_probs(e, texts, logit_scale)  # [1, K + B]
        one_hot = torch.eye(k, texts.shape[0], device=probs.device, dtype=probs.dtype)[:, None]  # [K, 1, T]
        (g_e,) = torch.autograd.grad(probs, e, grad_outputs=one_hot, is_grads_batched=True)  # [K, 1, E]
        weights = []
        for c0 in range(0, k, chunk):
            retain = c0 + chunk < k
            if single:
                g_z = _vjp(e_graph, z, g_e[c0:c0 + chunk], retain)
            else:
                g_y = _mid_gradient(dense, y, g_e[c0:c0 + chunk])
                g_z = _vjp(y, z, g_y, retain)
            weights.append(g_z[:, 0, NUM_PREFIX:].float().mean(dim=1))  # spatial mean → [c, D]
    cam = gradcam_maps(z.detach()[0, NUM_PREFIX:], torch.cat(weights), grid)
    return GradCamResult(cam, probs[0].detach().float())


def _vjp(output: torch.Tensor, leaf: torch.Tensor, cotangents: torch.Tensor, retain: bool) -> torch.Tensor:
    """[c, *output.shape] cotangents → [c, *leaf.shape] gradients: one plain backward if c = 1, else one
    vmapped backward (`is_grads_batched`)."""
    cotangents = cotangents.to(output.dtype)
    if cotangents.shape[0] == 1:
        (g,) = torch.autograd.grad(output, leaf, grad_outputs=cotangents[0], retain_graph=retain)
        return g[None]
    (g,) = torch.autograd.grad(output, leaf, grad_outputs=cotangents, is_grads_batched=True, retain_graph=retain)
    return g
