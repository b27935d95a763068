"""Joint transforms of an image and its label map: every geometric change is applied to both, so a
pixel's label always stays under it (bilinear for the image, nearest for the labels, padding 255)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from wsss.seg.loss import IGNORE


def normalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [3, H, W] → float, normalised."""
    x = image.float().div(255)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def random_scale(image: torch.Tensor, mask: torch.Tensor, low: float, high: float, g: torch.Generator):
    s = low + (high - low) * float(torch.rand((), generator=g))
    size = (max(1, round(image.shape[-2] * s)), max(1, round(image.shape[-1] * s)))
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    # nearest-exact samples at pixel centres, as bilinear (align_corners=False) does: "nearest" is half a
    # pixel off, which moves labels against their pixels at every edge
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(mask.dtype)
    return image, mask


def pad_to(image: torch.Tensor, mask: torch.Tensor, size: int):
    """Pad bottom/right to at least size×size: image with 0 (the mean after normalising), labels with 255."""
    ph, pw = max(0, size - image.shape[-2]), max(0, size - image.shape[-1])
    if ph or pw:
        image = F.pad(image, (0, pw, 0, ph), value=0.0)
        mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE)
    return image, mask


def random_crop(image: torch.Tensor, mask: torch.Tensor, size: int, g: torch.Generator):
    image, mask = pad_to(image, mask, size)
    top = int(torch.randint(image.shape[-2] - size + 1, (), generator=g))
    left = int(torch.randint(image.shape[-1] - size + 1, (), generator=g))
    return image[:, top:top + size, left:left + size], mask[top:top + size, left:left + size]


def random_flip(image: torch.Tensor, mask: torch.Tensor, g: torch.Generator):
    if float(torch.rand((), generator=g)) < 0.5:
        return image.flip(-1), mask.flip(-1)
    return image, mask


def train_transform(image: torch.Tensor, mask: torch.Tensor, *, crop: int, scale: tuple[float, float],
                    mean, std, g: torch.Generator):
    """uint8 image [3, H, W] + labels [H, W] → normalised crop [3, crop, crop] + labels [crop, crop]."""
    x = normalize(image, mean, std)
    x, mask = random_scale(x, mask, *scale, g)
    x, mask = random_crop(x, mask, crop, g)
    return random_flip(x, mask, g)


def padded_side(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)
