"""Feature Pyramid Network ("Feature Pyramid Networks for Object Detection", Lin et al. 2017), as mmdet/mmseg build
it: 1x1 lateral convs, top-down nearest-neighbour upsampling to each finer map's size, 3x3 output convs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FPN"]


class FPN(nn.Module):
    """Fuse backbone maps of decreasing resolution into maps of ``out_channels`` each.

    Convolutions have biases and no normalisation (the mmseg Semantic FPN and mmdet Mask R-CNN setting).
    ``extra_levels`` appends coarser maps by max-pooling the last output with kernel 1, stride 2 (mmdet's
    ``num_outs`` > inputs without ``add_extra_convs``), e.g. P6 for Mask R-CNN.

    Attributes:
        out_channels: channels of every output map.
        feature_info: ``[dict(num_chs=..., reduction=...)]`` of the outputs when ``strides`` is given, else the
            reductions are ``None``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int = 256,
        extra_levels: int = 0,
        strides: Sequence[int] | None = None,
    ) -> None:
        """
        Args:
            in_channels: channels of the input maps, finest first.
            out_channels: channels of every output map.
            extra_levels: coarser maps appended by stride-2 subsampling of the last output.
            strides: the input maps' strides relative to the image, only to fill ``feature_info``.
        """
        super().__init__()
        if strides is not None and len(strides) != len(in_channels):
            raise ValueError(f"FPN: {len(strides)} strides for {len(in_channels)} input maps")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.extra_levels = extra_levels
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        reductions = list(strides) if strides is not None else [None] * len(in_channels)
        for _ in range(extra_levels):
            reductions.append(reductions[-1] * 2 if reductions[-1] else None)
        self.feature_info = [dict(num_chs=out_channels, reduction=r) for r in reductions]

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Build the pyramid.

        Args:
            features: maps (B, in_channels[i], H_i, W_i), finest first.

        Returns:
            ``len(features) + extra_levels`` maps (B, out_channels, H_i, W_i), finest first.
        """
        if len(features) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} maps, got {len(features)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        for _ in range(self.extra_levels):
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
