"""Small layers and helpers shared by the backbone families."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

__all__ = ["init_linear_and_norm", "window_partition", "window_reverse", "pad_to_multiple"]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a channels-last map (B, H, W, C) at the bottom and right so H and W are multiples of ``multiple``."""
    _, h, w, _ = x.shape
    pad_h, pad_w = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    if pad_h or pad_w or torch.jit.is_tracing():  # a trace keeps the pad, so other sizes export too
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split (B, H, W, C), H and W multiples of ``window_size``, into windows (B * nW, ws * ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)  # (B*nW, ws*ws, C)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws * ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)  # (B, H, W, C)


def init_linear_and_norm(m: nn.Module) -> None:
    """The init every family's official code uses (``model.apply``): Linear trunc-normal(0.02) with zero bias,
    LayerNorm weight 1 and bias 0."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
