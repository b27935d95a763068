"""DeepLab-V3 segmenters (torchvision): ResNet-50/101 or MobileNet-V3 backbones for real data, and a
small dilated CNN backbone for the 64-px toy world. Weights come from a local file when given (ImageNet
backbone or a whole COCO-trained DeepLab, whose classifier is left out when the class count differs):
nothing is downloaded here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3

from wsss.errors import ConfigError

ARCHITECTURES = ("toy", "resnet50", "resnet101", "mobilenet_v3_large")


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ToyBackbone(nn.Module):
    """Three stride-2 stages then dilated convolutions: output stride 8 (an 8×8 map for a 64-px image),
    as DeepLab's dilated ResNets keep detail, at a size that trains in minutes on a CPU."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.out_channels = 4 * w
        self.body = nn.Sequential(_conv(3, w, 2), _conv(w, w), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w),
                                  _conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w), _conv(4 * w, 4 * w, dilation=2),
                                  _conv(4 * w, 4 * w, dilation=4))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(x)}


def deeplab_head(in_channels: int, num_classes: int, rates: tuple[int, ...], channels: int) -> nn.Sequential:
    """torchvision's DeepLabHead (ASPP → 3×3 conv → 1×1 classifier) at a chosen width (it fixes 256)."""
    return nn.Sequential(ASPP(in_channels, list(rates), channels), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, num_classes, 1))


def build_segmenter(arch: str, num_classes: int, weights: str | None = None, width: int = 16) -> DeepLabV3:
    """A DeepLab-V3 with `num_classes` outputs (background included); `weights`: a local state dict."""
    if arch == "toy":
        backbone = ToyBackbone(width)
        model = DeepLabV3(backbone, deeplab_head(backbone.out_channels, num_classes, (2, 4, 6), 2 * width))
    elif arch in ARCHITECTURES:
        from torchvision.models import segmentation

        model = getattr(segmentation, f"deeplabv3_{arch}")(weights=None, weights_backbone=None,
                                                           num_classes=num_classes, aux_loss=False)
    else:
        raise ConfigError(f"train.arch: unknown architecture {arch!r} (one of {', '.join(ARCHITECTURES)})")
    if weights:
        load_initial_weights(model, weights)
    return model


def load_initial_weights(model: DeepLabV3, path: str) -> None:
    """Load an ImageNet backbone (keys of a plain classification network) or a whole DeepLab state dict;
    tensors whose shape differs (the classifier of another class count) are left at their initialisation."""
    if not Path(path).is_file():
        raise ConfigError(f"train.weights: {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"train.weights: {path} is not a readable state dict ({type(e).__name__})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    own = model.state_dict()
    if not any(k in own for k in state):  # a classification backbone: its keys live under "backbone."
        state = {f"backbone.{k}": v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"train.weights: no tensor of {path} fits this {type(model).__name__}")
    model.load_state_dict(usable, strict=False)
    print(f"train: initialised {len(usable)}/{len(own)} tensors from {path}")
