"""SemPLeS's prompt-guided refinement (its third stage), applied to the network this product trains.

With the CLIP and the learned background prompts frozen, the segmenter is pushed so that the image masked
by its *predicted* region of a present class k does not look like k's own background prompt p_k:

    L_refine = −log(1 − s(E_img(M_k ⊙ X), p_k)),   M_k = the segmenter's softmax probability of class k,

averaged over the (image, present class) pairs of the batch (image-level labels only) and added to the
confidence-guided loss with weight λ₃ (`train.prompt_refine`; SemPLeS: 0.05 VOC, 0.2 COCO). The gradient
flows through the frozen image tower into M_k, so a region that spills onto the class's usual background
(the water under a boat) costs more than the boat itself. The term is `foreground_repel` of the prompt
objective (`wsss.prompts.loss`), the crop embedding the one the prompts were learned against.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsss.prompts.loss import foreground_repel


class PromptRefinement(nn.Module):
    """λ₃ · L_refine for a batch; holds the frozen image tower and the [C, E] prompt embeddings (buffers,
    never parameters, so DDP and the optimiser leave them alone)."""

    def __init__(self, visual: nn.Module, prompts: torch.Tensor, weight: float, read_out: str,
                 seg_mean: Sequence[float], seg_std: Sequence[float], clip_mean: Sequence[float],
                 clip_std: Sequence[float], patch_size: int):
        super().__init__()
        self.visual = visual.eval()
        for p in self.visual.parameters():
            p.requires_grad_(False)
        self.register_buffer("prompts", prompts.float(), persistent=False)
        self.weight, self.read_out, self.patch_size = float(weight), read_out, int(patch_size)
        view = lambda v: torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)  # noqa: E731
        # segmenter-normalised pixels → CLIP-normalised: x_clip = x · a + b
        self.register_buffer("scale", view(seg_std) / view(clip_std), persistent=False)
        self.register_buffer("shift", (view(seg_mean) - view(clip_mean)) / view(clip_std), persistent=False)

    def train(self, mode: bool = True):  # the tower stays in eval mode (no dropout), whatever the caller says
        return super().train(False)

    def forward(self, x: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] as the segmenter sees it, its logits [B, 1 + C, H, W], labels [B, C] multi-hot
        (image-level). Returns the weighted term (0 with a gradient path when no image has a label)."""
        b, k = labels.nonzero(as_tuple=True)
        if len(b) == 0:
            return logits.sum() * 0.0
        region = logits.float().softmax(1)[b, k + 1][:, None]  # [N, 1, H, W]: class k's predicted region
        pixels = (x[b].float() * self.scale + self.shift) * region
        pixels = _whole_patches(pixels, self.patch_size)
        from wsss.clip.embed import image_embedding

        f = image_embedding(self.visual, pixels, self.read_out)
        return self.weight * foreground_repel(f, self.prompts[k])


def _whole_patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """Resize [N, 3, H, W] up to multiples of the patch size (bilinear) so every pixel is in a patch."""
    h, w = x.shape[-2:]
    size = (-(-h // p) * p, -(-w // p) * p)
    return x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def prompt_refinement(settings, class_names: list[str], seg_mean, seg_std, device) -> PromptRefinement | None:
    """The refinement term the settings ask for (None when `train.prompt_refine` is 0): the CLIP of
    `clip.model` / `clip.pretrained` and the prompts of stage `prompts`, checked to belong together."""
    if not settings.train.prompt_refine:
        return None
    from wsss.clip.dense import _pair, image_mean_std
    from wsss.clip.model import load_clip
    from wsss.prompts.store import clip_identity, load_prompts, prompts_file

    clip = settings.clip
    embeddings = load_prompts(prompts_file(settings), clip_identity(clip.model, clip.pretrained), class_names)
    model, _ = load_clip(clip.model, clip.pretrained, device="cpu", precision="fp32")
    visual = model.visual.float()
    clip_mean, clip_std = image_mean_std(visual)
    term = PromptRefinement(visual, embeddings, settings.train.prompt_refine, settings.prompts.image_embedding,
                            seg_mean, seg_std, clip_mean, clip_std, _pair(visual.patch_size)[0])
    return term.to(device)
