"""The CAM engine: one image (or a batch of equal-size images) → GradCAM and CAA-refined maps.

Per image: preprocess at native aspect; blocks 1..L-1 once without gradients while the last blocks'
attention is averaged in place; the last block once with all present classes' gradients in one pass;
CAA from that attention. CPU or GPU, fp32 or fp16/bf16 autocast (attention average, Sinkhorn, the
class scores and the refinement stay fp32).

Memory: one N×N fp32 buffer per image (the attention average, then Sinkhorn/symmetrisation in place,
A² never formed) plus O(N·D) activations; the class count only adds the K×H×W outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsss.amp import amp_dtype
from wsss.cam.caa import attention_affinity, box_masks, caa_refine
from wsss.cam.gradcam import softmax_gradcam
from wsss.clip.dense import DenseViT, image_mean_std, preprocess
from wsss.settings import CamsSettings



@dataclass
class CamOutput:
    cam: np.ndarray  # [K, H, W] fp32 at the original size, in the order of the class indices given
    refined: np.ndarray | None  # [K, H, W] fp32 CAA-refined, None when refine is off
    cam_grid: np.ndarray  # [K, h, w] fp32 on the patch grid
    refined_grid: np.ndarray | None  # [K, h, w]
    probs: np.ndarray  # [K + B] softmax over present classes then background texts


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[K, h, w] → [K, H, W] bilinear with half-pixel centres (= cv2.resize INTER_LINEAR when enlarging)."""
    if maps.shape[0] == 0:
        return maps.new_zeros((0, *size))
    return F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=False)[0]


class CamEngine:
    """CLIP-ES pseudo-object maps from a frozen open_clip CLIP model (left unmodified, in eval mode).

    class_text [C, E]: class embeddings (`encode_class_texts`), rows addressed by `class_idx`;
    bg_text [B, E]: background embeddings shared by every image; class_bg [C, E]: optional per-class
    background embeddings (learned prompts), those of an image's present classes join its softmax. `config`: the `cams` settings (its scheduling knobs are ignored
    here). `device` defaults to the model's.
    """

    def __init__(self, model, class_text: torch.Tensor, bg_text: torch.Tensor, config: CamsSettings | None = None,
                 device: str | torch.device | None = None, class_bg: torch.Tensor | None = None):
        self.config = config or CamsSettings()
        self.model = model
        if getattr(model, "training", False):
            raise ValueError("CamEngine needs the model in eval mode (call model.eval())")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dense = DenseViT(model.visual, attn_layers=self.config.caa_layers if self.config.refine else 0,
                              pos_embed_fp16=self.config.pos_embed_fp16, chunk_elems=self.config.attn_chunk_elems,
                              token_chunk=self.config.token_chunk)
        self.class_text = F.normalize(class_text.detach().float(), dim=-1).to(self.device)
        self.bg_text = F.normalize(bg_text.detach().float(), dim=-1).to(self.device)
        self.class_bg = None if class_bg is None else F.normalize(class_bg.detach().float(), dim=-1).to(self.device)
        if self.class_bg is not None and self.class_bg.shape != self.class_text.shape:
            raise ValueError(f"class_bg must be one embedding per class {tuple(self.class_text.shape)}, "
                             f"got {tuple(self.class_bg.shape)}")
        self.logit_scale = float(model.logit_scale.detach().float().exp())
        self.mean, self.std = image_mean_std(model.visual)
        self.patch_size = self.dense.patch_size
        self.amp = amp_dtype(self.device, self.config.amp)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return preprocess(image, self.patch_size, self.mean, self.std)

    def __call__(self, image: Image.Image, class_idx: Sequence[int]) -> CamOutput:
        return self.run_batch([image], [class_idx])[0]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def run_batch(self, images: Sequence[Image.Image], class_idx: Sequence[Sequence[int]]) -> list[CamOutput]:
        """Several images of one size (after rounding up to the patch grid) in one trunk forward."""
        if len(images) != len(class_idx):
            raise ValueError("one class index list per image")
        if not images:
            return []
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        grid = self.dense.grid(*pixels.shape[-2:])
        n = grid[0] * grid[1]
        refine = self.config.refine
        attn = torch.zeros(len(images), n, n, device=self.device) if refine else None
        with self._autocast():
            x = self.dense.trunk(pixels, attn_out=attn)
        outs = []
        for b, (image, idx) in enumerate(zip(images, class_idx)):
            outs.append(self._finish(image, list(idx), x[b:b + 1], grid, attn[b] if refine else None))
        return outs

    def background(self, idx: list[int]) -> torch.Tensor:
        """The softmax's background rows for an image with classes `idx`: the shared words, then the
        present classes' own background prompts."""
        if self.class_bg is None:
            return self.bg_text
        return torch.cat([self.bg_text, self.class_bg[idx]])

    def _finish(self, image: Image.Image, idx: list[int], x_last: torch.Tensor, grid: tuple[int, int],
                attn: torch.Tensor | None) -> CamOutput:
        size = (image.height, image.width)
        if any(i < 0 or i >= self.class_text.shape[0] for i in idx):
            raise ValueError(f"class index out of range 0..{self.class_text.shape[0] - 1}: {idx}")
        if not idx:
            empty = np.zeros((0, *size), np.float32)
            grid_empty = np.zeros((0, *grid), np.float32)
            return CamOutput(empty, empty.copy() if self.config.refine else None, grid_empty,
                             grid_empty.copy() if self.config.refine else None, np.zeros(0, np.float32))
        with self._autocast():
            res = softmax_gradcam(self.dense, x_last, grid, self.class_text[idx], self.background(idx), self.logit_scale,
                                  attn_out=None if attn is None else attn[None],
                                  class_chunk=1 if self.config.grad_mode == "loop" else self.config.class_chunk)
        cam_grid = res.cam_grid
        refined_grid = None
        if attn is not None:
            attn.div_(self.dense.attn_layers)  # sum over layers → average, in place
            affinity = attention_affinity(attn, self.config.sinkhorn_rounds, square=False, inplace=True)
            boxes = box_masks(cam_grid, self.config.box_threshold, self.config.box_reference_quirk)
            refined_grid = caa_refine(affinity, cam_grid, boxes, power=2)
        return CamOutput(
            cam=_np(upsample(cam_grid, size)),
            refined=None if refined_grid is None else _np(upsample(refined_grid, size)),
            cam_grid=_np(cam_grid),
            refined_grid=None if refined_grid is None else _np(refined_grid),
            probs=_np(res.probs),
        )


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def size_groups(sizes: Sequence[tuple[int, int]], patch_size: int, max_batch: int) -> list[list[int]]:
    """Indices of images grouped by padded size (W, H rounded up to the patch size), ≤ max_batch per group,
    in first-seen order: the batches `CamEngine.run_batch` accepts."""
    from wsss.clip.dense import padded_size

    groups: dict[tuple[int, int], list[list[int]]] = {}
    for i, (w, h) in enumerate(sizes):
        key = padded_size(w, h, patch_size)
        bucket = groups.setdefault(key, [[]])
        if len(bucket[-1]) == max_batch:
            bucket.append([])
        bucket[-1].append(i)
    return [g for bucket in groups.values() for g in bucket]
