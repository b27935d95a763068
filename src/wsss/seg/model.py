"""DeepLab-V3 / V3+ segmenters (torchvision's ASPP): ResNet-50/101 or MobileNet-V3 backbones for real data;
for the 64-px toy world the frozen image tower of its CLIP, or a small dilated CNN from scratch. Weights
come from a local file when given (ImageNet backbone or a whole COCO-trained DeepLab, whose classifier is
left out when the class count differs): nothing is downloaded here.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3

from wsss.errors import ConfigError
from wsss.settings import V3PLUS_ARCHS

ARCHITECTURES = ("toy", "clip", "resnet50", "resnet101", "mobilenet_v3_large")


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


class PixelStem(nn.Module):
    """Trainable features straight from the pixels for the DeepLab-V3+ decoder of a `clip` backbone: the
    edges a ViT's patch tokens (stride 8 or 16) blur away. Two stride-2 stages give the stride-4 features
    of the paper's decoder (and, on the way, stride-2 ones); `strides` with 1 adds a full-resolution branch,
    two 3×3 convolutions on the image, so the decoder can place an edge to the pixel."""

    def __init__(self, width: int, strides: tuple[int, ...] = (4,)):
        super().__init__()
        self.strides = tuple(sorted(strides, reverse=True))
        self.channels = {4: 2 * width, 2: width, 1: width}
        self.out_channels = self.channels[4]
        self.body = nn.Sequential(_conv(3, width, 2), _conv(width, width), _conv(width, 2 * width, 2),
                                  _conv(2 * width, 2 * width))
        self.full = nn.Sequential(_conv(3, width), _conv(width, width)) if 1 in strides else None

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        half = self.body[1](self.body[0](x))
        out = {4: self.body[3](self.body[2](half)), 2: half}
        if self.full is not None:
            out[1] = self.full(x)
        return {s: out[s] for s in self.strides}


class ClipBackbone(nn.Module):
    """An open_clip ViT image tower as a dense backbone: its patch tokens after `ln_post` as a
    [B, D, h, w] map (output stride = the patch size), the positional embedding resized to each input's
    grid. For the toy world it is what ImageNet weights are for real data: a backbone that already knows
    the images, here from the project's own CLIP."""

    def __init__(self, visual: nn.Module, trainable: bool = False, stem: PixelStem | None = None):
        super().__init__()
        from wsss.clip.dense import _pair

        self.visual, self.trainable, self.stem = visual, trainable, stem
        for p in visual.parameters():
            p.requires_grad_(trainable)
        self.patch_size = _pair(visual.patch_size)[0]
        self.out_channels = visual.transformer.width

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.trainable:
            features = self._forward(x)
        else:  # a frozen tower: features without a backward through it (CPU-cheap)
            with torch.no_grad():
                features = self._forward(x)
        if self.stem is not None:
            features.update({"low" if s == 4 else f"low{s}": f for s, f in self.stem(x).items()})
        return features

    def _forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from wsss.clip.embed import final_tokens

        tokens = final_tokens(self.visual, x)[:, 1:]
        b, n, d = tokens.shape
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return {"out": tokens.transpose(1, 2).reshape(b, d, h, w)}


class DeepLabV3Plus(nn.Module):
    """DeepLab-V3+ (Chen et al., 2018): the ASPP output upsampled to the stride-4 low-level features,
    concatenated with their 1×1 projection, two 3×3 convolutions, the classifier, bilinear to the input.
    The backbone returns {"out": deep features, "low": stride-4 features}. `finer` = ((stride, channels),
    ...) continues the decoder U-Net-style down to stride 2 and 1 ("low2", "low1" features): each level
    upsamples ×2, adds its projected features and two 3×3 convolutions at half the width, so the logits
    come from full resolution instead of a ×4 bilinear upsampling (corners, thin parts, holes)."""

    def __init__(self, backbone: nn.Module, in_channels: int, low_channels: int, num_classes: int,
                 rates: tuple[int, ...], channels: int, finer: tuple[tuple[int, int], ...] = ()):
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(in_channels, list(rates), channels)
        low = max(8, channels // 4)
        self.project = nn.Sequential(nn.Conv2d(low_channels, low, 1, bias=False), nn.BatchNorm2d(low),
                                     nn.ReLU(inplace=True))
        self.fuse = nn.Sequential(_conv(channels + low, channels), _conv(channels, channels))
        self.strides = tuple(stride for stride, _ in finer)
        self.finer = nn.ModuleList()
        width = channels
        for _, skip_channels in finer:
            out = max(8, width // 2)
            self.finer.append(nn.ModuleDict({
                "project": nn.Sequential(nn.Conv2d(skip_channels, out, 1, bias=False), nn.BatchNorm2d(out),
                                         nn.ReLU(inplace=True)),
                "fuse": nn.Sequential(_conv(width + out, out), _conv(out, out))}))
            width = out
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        low = self.project(features["low"])
        deep = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.fuse(torch.cat([deep, low], dim=1))
        for stride, level in zip(self.strides, self.finer):
            skip = level["project"](features[f"low{stride}"])
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = level["fuse"](torch.cat([y, skip], dim=1))
        return {"out": F.interpolate(self.classifier(y), size=x.shape[-2:], mode="bilinear", align_corners=False)}


def clip_tower(model_name: str, weights: str | None) -> nn.Module:
    """The image tower of an open_clip model in fp32, trainable; weights from a local checkpoint or tag
    (None: the architecture only, for loading a saved segmenter)."""
    from wsss.clip.model import load_clip, register_configs

    if weights:
        model, _ = load_clip(model_name, weights, device="cpu", precision="fp32")
    else:
        import logging

        import open_clip

        register_configs()
        logging.getLogger().disabled = True  # open_clip warns that no weights were loaded: they come next
        try:
            model = open_clip.create_model(model_name, pretrained=None)
        finally:
            logging.getLogger().disabled = False
    return model.visual.float()


def deeplab_head(in_channels: int, num_classes: int, rates: tuple[int, ...], channels: int) -> nn.Sequential:
    """torchvision's DeepLabHead (ASPP → 3×3 conv → 1×1 classifier) at a chosen width (it fixes 256)."""
    return nn.Sequential(ASPP(in_channels, list(rates), channels), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, num_classes, 1))


def default_decoder_stride(arch: str, head: str) -> int:
    """`train.decoder_stride: null`: full resolution (1) for the V3+ decoder on a `clip` backbone, whose
    pixel stem has the levels for it; 4, the paper's decoder, for the CNN backbones (as published)."""
    return 1 if arch == "clip" and head == "deeplabv3plus" else 4


def build_segmenter(arch: str, num_classes: int, weights: str | None = None, width: int = 16,
                    clip_model: str | None = None, head: str = "deeplabv3",
                    trainable_backbone: bool = False, decoder_stride: int = 4) -> nn.Module:
    """A DeepLab-V3 (`head` deeplabv3plus: V3+) with `num_classes` outputs (background included);
    `weights`: a local state dict (for `clip`: the CLIP checkpoint of `clip_model` whose image tower becomes
    the backbone). `trainable_backbone`: whether the CLIP tower gets gradients (other backbones always do).
    `decoder_stride`: the finest stride the V3+ decoder fuses pixel features at (4 as published; 2 or 1
    continue it to full resolution, `clip` only)."""
    if head == "deeplabv3plus" and arch not in V3PLUS_ARCHS:
        raise ConfigError(f"train.head deeplabv3plus works with arch clip, resnet50 or resnet101, not {arch}")
    if decoder_stride != 4 and (head != "deeplabv3plus" or arch != "clip"):
        raise ConfigError("train.decoder_stride below 4 needs head deeplabv3plus and arch clip")
    if arch == "toy":
        backbone = ToyBackbone(width)
        model = DeepLabV3(backbone, deeplab_head(backbone.out_channels, num_classes, (2, 4, 6), 2 * width))
    elif arch == "clip":
        if not clip_model:
            raise ConfigError("train.arch clip needs the CLIP model name (clip.model)")
        strides = tuple(s for s in (4, 2, 1) if s >= decoder_stride)
        stem = PixelStem(width, strides) if head == "deeplabv3plus" else None
        backbone = ClipBackbone(clip_tower(clip_model, weights), trainable=trainable_backbone, stem=stem)
        if stem is not None:
            finer = tuple((s, stem.channels[s]) for s in strides[1:])
            return DeepLabV3Plus(backbone, backbone.out_channels, stem.out_channels, num_classes, (2, 4, 6),
                                 4 * width, finer)
        return DeepLabV3(backbone, deeplab_head(backbone.out_channels, num_classes, (2, 4, 6), 4 * width))
    elif arch in ARCHITECTURES:
        from torchvision.models import segmentation

        model = getattr(segmentation, f"deeplabv3_{arch}")(weights=None, weights_backbone=None,
                                                           num_classes=num_classes, aux_loss=False)
        if head == "deeplabv3plus":  # ResNet's layer1 (stride 4, 256 channels) as the low-level features
            model.backbone.return_layers["layer1"] = "low"
            model = DeepLabV3Plus(model.backbone, 2048, 256, num_classes, (12, 24, 36), 256)
    else:
        raise ConfigError(f"train.arch: unknown architecture {arch!r} (one of {', '.join(ARCHITECTURES)})")
    if weights:
        load_initial_weights(model, weights)
    return model


def load_initial_weights(model: nn.Module, path: str) -> None:
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
    if isinstance(model, DeepLabV3Plus):  # a whole torchvision DeepLab-V3: its ASPP is classifier.0
        state = {("aspp." + k[len("classifier.0."):] if k.startswith("classifier.0.") else k): v
                 for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ConfigError(f"train.weights: no tensor of {path} fits this {type(model).__name__}")
    model.load_state_dict(usable, strict=False)
    print(f"train: initialised {len(usable)}/{len(own)} tensors from {path}")
