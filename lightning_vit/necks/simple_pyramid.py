"""Simple feature pyramid of ViTDet ("Exploring Plain Vision Transformer Backbones for Object Detection", Li et al.
2022): one stride-16 map -> maps at strides 4, 8, 16 and 32, for dense heads over a single-scale (columnar) backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

__all__ = ["SimplePyramid"]

_REDUCTIONS = (4, 8, 16, 32)


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid over a stride-16 map with C channels.

    - stride 4: ConvTranspose2d(C, C/2, k2 s2) -> LayerNorm2d -> GELU -> ConvTranspose2d(C/2, C/4, k2 s2);
    - stride 8: ConvTranspose2d(C, C/2, k2 s2);
    - stride 16: identity;
    - stride 32: MaxPool2d(k2 s2) with ``ceil_mode``, so an odd row or column is pooled rather than dropped.

    From an h x w input the maps are 4h x 4w, 2h x 2w, h x w and ceil(h/2) x ceil(w/2) (for PatchConvNet's
    ceil(H/16) x ceil(W/16) map, the last is ceil(H/32) x ceil(W/32)). With ``out_channels`` each level then gets
    ViTDet's output projection: 1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d (convs without bias).

    Attributes:
        out_channels: channels of the four maps.
        feature_info: ``[dict(num_chs=..., reduction=...)]`` of the four maps, reductions 4, 8, 16, 32 relative to
            the image, assuming the input map is at stride 16.
    """

    def __init__(self, in_channels: int, out_channels: Sequence[int] | None = None) -> None:
        """
        Args:
            in_channels: channels C of the stride-16 input map (divisible by 4).
            out_channels: four channel counts, one per stride 4/8/16/32; None keeps C/4, C/2, C, C without projection.
        """
        super().__init__()
        if in_channels % 4:
            raise ValueError(f"SimplePyramid: in_channels must be divisible by 4, got {in_channels}")
        scale_channels = (in_channels // 4, in_channels // 2, in_channels, in_channels)
        if out_channels is not None and len(out_channels) != len(_REDUCTIONS):
            raise ValueError(f"SimplePyramid: out_channels must have 4 entries (strides 4/8/16/32), got {out_channels}")
        self.in_channels = in_channels
        self.out_channels = list(out_channels) if out_channels is not None else list(scale_channels)
        self.feature_info = [dict(num_chs=c, reduction=r) for c, r in zip(self.out_channels, _REDUCTIONS)]

        half = in_channels // 2
        self.scales = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2),
                    LayerNorm2d(half),
                    nn.GELU(),
                    nn.ConvTranspose2d(half, in_channels // 4, kernel_size=2, stride=2),
                ),
                nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True),
            ]
        )
        if out_channels is None:
            self.outputs = nn.ModuleList([nn.Identity() for _ in _REDUCTIONS])
        else:
            self.outputs = nn.ModuleList(
                [
                    nn.Sequential(
                        nn.Conv2d(c_in, c_out, kernel_size=1, bias=False),
                        LayerNorm2d(c_out),
                        nn.Conv2d(c_out, c_out, kernel_size=3, padding=1, bias=False),
                        LayerNorm2d(c_out),
                    )
                    for c_in, c_out in zip(scale_channels, out_channels)
                ]
            )

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Build the pyramid.

        Args:
            features: a one-element list ``[map]``, map (B, C, h, w) at stride 16 (a ``features_only`` backbone's
                output).

        Returns:
            Four maps (B, out_channels[i], ...) at strides 4, 8, 16, 32.
        """
        if len(features) != 1 or features[0].ndim != 4 or features[0].shape[1] != self.in_channels:
            shapes = [tuple(f.shape) for f in features]
            raise ValueError(
                f"SimplePyramid expects one (B, {self.in_channels}, h, w) stride-16 map, got maps of shapes {shapes}"
            )
        x = features[0]
        return [out(scale(x)) for scale, out in zip(self.scales, self.outputs)]
