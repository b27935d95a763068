"""A straightforward CLIP-ES reference (the paper code's structure, transcribed for open_clip), and the tiny
random CLIP models the CAM tests share. `tests/test_cam_reference.py` proves its pieces against independent
definitions and the engine equal to it; `benchmarks/cam_throughput.py` and `benchmarks/gpu_check.py` time
the engine against it. It lives here, free of pytest, because `gpu_check.py` runs it on a bare GPU machine.

Reference = `generate_cams_voc12.py` + its modified pytorch-grad-cam: torchvision preprocessing, blocks
1..L-1 under no_grad keeping every block's head-averaged attention (`need_weights=True`), then per present
class: the last block re-run, one full backward (`loss.backward()`, parameter gradients included, as
pytorch-grad-cam does), GradCAM with numpy, `cv2.resize`, and CAA per class (stack the last 8 maps, mean,
Sinkhorn, symmetrise, A @ A, `scoremap2bbox` with cv2.findContours, column mask, matmul, `scale_cam_image`).
Nothing here is imported by the library.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


# ---- tiny models -----------------------------------------------------------------------------------------
def tiny_clip(layers: int = 4, width: int = 64, patch: int = 8, image_size: int = 32, embed_dim: int = 32,
              seed: int = 0, sharpen: float = 4.0, batch_first: bool = True, pool_type: str = "tok",
              ls_init_value: float | None = None):
    """A random open_clip CLIP small enough for unit tests. `sharpen` scales the q/k projection weights so
    the attention is peaked (random init gives nearly uniform attention, which makes CAA ill-conditioned)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(embed_dim, CLIPVisionCfg(layers=layers, width=width, head_width=16, patch_size=patch,
                                          image_size=image_size, pool_type=pool_type,
                                          ls_init_value=ls_init_value),
                 CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1)).eval()
    with torch.no_grad():
        for blk in model.visual.transformer.resblocks:
            blk.attn.in_proj_weight[: 2 * width].mul_(sharpen)
    if not batch_first:
        _to_seq_first(model.visual.transformer)
    return model


def _to_seq_first(transformer):
    """Emulate an older open_clip whose transformer runs in LND layout."""
    transformer.batch_first = False
    for blk in transformer.resblocks:
        blk.attn.batch_first = False


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    base = rng.randint(0, 255, (max(2, height // 8), max(2, width // 8), 3)).astype(np.uint8)
    image = Image.fromarray(base).resize((width, height), Image.BILINEAR)
    noise = rng.randint(-20, 20, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image).astype(int) + noise, 0, 255).astype(np.uint8))


# ---- reference pieces, as in the CLIP-ES repository --------------------------------------------------------
def ref_preprocess(image, patch, mean, std):
    from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor

    h = int(np.ceil(image.height / patch) * patch)
    w = int(np.ceil(image.width / patch) * patch)
    return Compose([Resize((h, w), interpolation=InterpolationMode.BICUBIC), ToTensor(), Normalize(mean, std)])(image)


def upsample_pos_emb(emb, new_size):
    first, emb = emb[:1, :], emb[1:, :]
    n, d = emb.size(0), emb.size(1)
    size = int(np.sqrt(n))
    emb = emb.permute(1, 0).reshape(1, d, size, size).contiguous()
    emb = F.interpolate(emb, size=new_size, mode="bilinear")
    emb = emb.reshape(d, -1).contiguous().permute(1, 0)
    return torch.cat([first, emb], 0)


def scale_cam_image(cam, target_size=None):
    result = []
    for img in cam:
        img = img - np.min(img)
        img = img / (1e-7 + np.max(img))
        if target_size is not None:
            img = cv2.resize(img, target_size)
        result.append(img)
    return np.float32(result)


def scoremap2bbox(scoremap, threshold, multi_contour_eval=True):
    height, width = scoremap.shape
    scoremap_image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    _, thr_gray_heatmap = cv2.threshold(src=scoremap_image, thresh=int(threshold * np.max(scoremap_image)),
                                        maxval=255, type=cv2.THRESH_BINARY)
    contours = cv2.findContours(image=thr_gray_heatmap, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.asarray([[0, 0, 0, 0]]), 1
    if not multi_contour_eval:
        contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        x0, y0, x1, y1 = x, y, x + w, y + h
        x1 = min(x1, width - 1)
        y1 = min(y1, height - 1)
        boxes.append([x0, y0, x1, y1])
    return np.asarray(boxes), len(contours)


def ref_box_mask(cam, threshold):
    box, cnt = scoremap2bbox(cam, threshold=threshold, multi_contour_eval=True)
    mask = torch.zeros(cam.shape)
    for i in range(cnt):
        x0, y0, x1, y1 = box[i]
        mask[y0:y1, x0:x1] = 1
    return mask


def ref_block(blk, x, need_weights=True):
    """One open_clip ResidualAttentionBlock (batch-first), returning its head-averaged attention too."""
    z = blk.ln_1(x)
    a, w = blk.attn(z, z, z, need_weights=need_weights, average_attn_weights=True)
    x = x + blk.ls_1(a)
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, w, z


class ReferenceClipEs:
    """Per-class CLIP-ES: one forward + backward of the last block per class, stored attention maps."""

    def __init__(self, model, class_text, bg_text, box_threshold=0.4, attn_layers=8, full_backward=True):
        from wsss.clip.dense import image_mean_std  # only constants

        self.model, self.visual = model, model.visual
        self.device = next(model.parameters()).device
        self.class_text = F.normalize(class_text.float(), dim=-1).to(self.device)
        self.bg_text = F.normalize(bg_text.float(), dim=-1).to(self.device)
        self.box_threshold, self.attn_layers, self.full_backward = box_threshold, attn_layers, full_backward
        self.mean, self.std = image_mean_std(model.visual)
        self.patch = model.visual.patch_size[0]

    def trunk(self, image):
        v = self.visual
        x = ref_preprocess(image, self.patch, self.mean, self.std)[None].to(self.device)
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        with torch.no_grad():
            x = v.conv1(x).reshape(1, v.conv1.out_channels, -1).permute(0, 2, 1)
            x = torch.cat([v.class_embedding.view(1, 1, -1), x], 1)
            x = x + upsample_pos_emb(v.positional_embedding, (h, w))
            x = v.ln_pre(x)
            attn_list = []
            for blk in v.transformer.resblocks[:-1]:
                x, aw, _ = ref_block(blk, x)
                attn_list.append(aw)
        return x, attn_list, (h, w)

    def last_layer(self, x, texts):
        blk = self.visual.transformer.resblocks[-1]
        x = x.detach().requires_grad_(True)
        y, aw, z = ref_block(blk, x)
        z.retain_grad()
        y = self.visual.ln_post(y)
        e = y[:, 1:, :].mean(1) @ self.visual.proj
        e = e / e.norm(dim=1, keepdim=True)
        probs = (self.model.logit_scale.exp() * e @ texts.t()).softmax(dim=-1)
        return probs, aw, z

    def __call__(self, image, class_idx):
        ori_w, ori_h = image.size
        x, attn_list, (h, w) = self.trunk(image)
        texts = torch.cat([self.class_text[class_idx], self.bg_text])
        out = {k: [] for k in ("cam_grid", "cam", "refined_grid", "refined", "boxes", "raw_max")}
        for idx in range(len(class_idx)):
            probs, aw_last, z = self.last_layer(x, texts)
            loss = probs[0, idx]
            if self.full_backward:
                loss.backward()
                grads = z.grad
            else:
                (grads,) = torch.autograd.grad(loss, z)
            acts = z.detach()[0, 1:].reshape(h, w, -1).permute(2, 0, 1).float().cpu().numpy()
            grads = grads[0, 1:].reshape(h, w, -1).permute(2, 0, 1).float().cpu().numpy()
            weights = np.mean(grads, axis=(1, 2))
            cam = np.maximum((weights[:, None, None] * acts).sum(axis=0), 0).astype(np.float32)
            out["raw_max"].append(cam.max() - cam.min())
            cam = scale_cam_image([cam])[0]  # compute_cam_per_layer: per target layer
            cam = scale_cam_image([np.maximum(cam, 0)])[0]  # aggregate_multi_layers: mean of one layer, again
            out["cam_grid"].append(cam)
            out["cam"].append(cv2.resize(cam, (ori_w, ori_h)))

            if idx == 0:
                maps = [aw[:, 1:, 1:] for aw in attn_list + [aw_last.detach()]]
                attn = torch.stack(maps, dim=0)[-self.attn_layers:].mean(dim=0)[0].cpu().detach().float()
            aff_mask = ref_box_mask(cam, self.box_threshold)
            out["boxes"].append(aff_mask.numpy().astype(bool))
            aff_mask = aff_mask.view(1, h * w)
            trans = attn / torch.sum(attn, dim=0, keepdim=True)
            trans = trans / torch.sum(trans, dim=1, keepdim=True)
            for _ in range(2):
                trans = trans / torch.sum(trans, dim=0, keepdim=True)
                trans = trans / torch.sum(trans, dim=1, keepdim=True)
            trans = (trans + trans.transpose(1, 0)) / 2
            trans = torch.matmul(trans, trans)
            trans = trans * aff_mask
            refined = torch.matmul(trans, torch.FloatTensor(cam).view(-1, 1)).reshape(h, w).numpy()
            out["refined_grid"].append(scale_cam_image([refined])[0])
            out["refined"].append(scale_cam_image([refined], (ori_w, ori_h))[0])
        if self.full_backward:
            self.model.zero_grad(set_to_none=True)
        return {k: np.stack(v) for k, v in out.items()}
