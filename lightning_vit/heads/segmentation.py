"""Semantic segmentation heads as mmsegmentation defines them.

- :class:`UperNetHead`: UPerNet ("Unified Perceptual Parsing for Scene Understanding", Xiao et al. 2018): a pyramid
  pooling module on the coarsest map, FPN top-down fusion, all levels concatenated at stride 4.
- :class:`FCNHead`: a few 3x3 convs, the auxiliary head trained beside UperNet on the stride-16 map.
- :class:`SemanticFPNHead`: the Panoptic FPN semantic branch ("Panoptic Feature Pyramid Networks", Kirillov et al.
  2019) over an :class:`~lightning_vit.necks.fpn.FPN`: each level is brought to stride 4 by 3x3 conv + 2x upsampling
  steps and the levels are summed.

Every head maps a list of NCHW maps to logits (B, num_classes, H_0, W_0) at the resolution of its finest input;
the task upsamples them to the label size. Convolutions are ``ConvModule`` = conv (no bias) -> BatchNorm -> ReLU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvModule", "UperNetHead", "FCNHead", "SemanticFPNHead"]


class ConvModule(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU, with mmcv's Kaiming (fan_out) initialisation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class _Classifier(nn.Sequential):
    """Dropout2d -> 1x1 conv to the class logits (mmseg's ``cls_seg``; weights N(0, 0.01), bias 0)."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        conv = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        super().__init__(nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), conv)


class UperNetHead(nn.Module):
    """UPerNet decode head (mmseg ``UPerHead``).

    Args:
        in_channels: channels of the input maps, finest (stride 4) first.
        num_classes: output classes.
        channels: width of every conv of the head (512 in the papers' recipes).
        pool_scales: output sizes of the pyramid pooling module's adaptive average pools.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        last = self.in_channels[-1]
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(last, channels)) for s in pool_scales
        )
        self.bottleneck = ConvModule(last + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in self.in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * channels, channels, 3)
        self.classifier = _Classifier(channels, num_classes, dropout)

    def _psp(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_resize(branch(x), x.shape[-2:]) for branch in self.ppm]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (B, num_classes, H_0, W_0) from maps ``features`` (finest first)."""
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        laterals.append(self._psp(features[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = torch.cat([outs[0]] + [_resize(x, size) for x in outs[1:]], dim=1)  # (B, L*channels, H_0, W_0)
        return self.classifier(self.fpn_bottleneck(fused))


class FCNHead(nn.Module):
    """Fully convolutional head on one map (mmseg ``FCNHead``, ``concat_input=False``).

    Args:
        in_channels: channels of the input map.
        num_classes: output classes.
        channels: width of the convs (256 for UperNet's auxiliary head).
        num_convs: 3x3 ConvModules before the classifier.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(ConvModule(in_channels if i == 0 else channels, channels, 3) for i in range(num_convs))
        )
        self.classifier = _Classifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) from one map (B, in_channels, H, W)."""
        return self.classifier(self.convs(x))


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch (mmseg ``FPNHead``) over FPN maps.

    Level i at stride s_i passes max(1, log2(s_i / s_0)) ConvModules (3x3), each followed by a 2x bilinear
    upsampling while the level is coarser than s_0; the levels are then resized to the finest one and summed.

    Args:
        in_channels: channels of the FPN maps (256 each in the recipes), finest first.
        strides: their strides (4, 8, 16, 32).
        num_classes: output classes.
        channels: width of the convs (128 in the recipes).
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        channels: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"SemanticFPNHead: {len(strides)} strides for {len(in_channels)} maps")
        self.scale_heads = nn.ModuleList()
        for c, s in zip(in_channels, strides):
            steps = max(1, int(math.log2(s) - math.log2(strides[0])))
            layers: list[nn.Module] = []
            for k in range(steps):
                layers.append(ConvModule(c if k == 0 else channels, channels, 3))
                if s != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.classifier = _Classifier(channels, num_classes, dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits (B, num_classes, H_0, W_0) from FPN maps (finest first)."""
        out = self.scale_heads[0](features[0])
        for head, x in zip(self.scale_heads[1:], features[1:]):
            out = out + _resize(head(x), out.shape[-2:])
        return self.classifier(out)
