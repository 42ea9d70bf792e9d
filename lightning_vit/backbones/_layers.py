"""Small layers and helpers shared by the backbone families."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

__all__ = ["attention", "init_linear_and_norm", "window_partition", "window_reverse", "pad_to_multiple"]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``softmax(q k^T * scale + attn_mask) v`` over (..., N, d) tensors, by the fastest exact route for the call.

    ``scaled_dot_product_attention`` where its fused kernels apply. On CPU those kernels cover fp32 only, and an
    additive mask that needs a gradient (a learned position bias) also sends SDPA to its unfused path, which on
    CPU is 2-6x slower than the three plain ops (measured at Swin-T stage-0 windows: bf16 training 47 -> 21 ms,
    fp32 training 74 -> 57 ms; see README "Performance"); those calls, and inference over short windows, take the
    plain ops. The fused kernels also
    need one head width for q, k and v; a narrower v (or q/k) is zero-padded, which is exact: zero q/k channels
    add nothing to the scores, zero v channels give zero outputs, which are sliced off.
    """
    if q.device.type == "cpu" and _plain_ops_faster(q, attn_mask):
        attn = (q * scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            attn = attn + attn_mask
        attn = attn.softmax(dim=-1)
        if dropout_p:
            attn = F.dropout(attn, dropout_p)
        return attn @ v
    dq, dv = q.shape[-1], v.shape[-1]
    if dq > dv:
        v = F.pad(v, (0, dq - dv))
    elif dq < dv:
        q, k = F.pad(q, (0, dv - dq)), F.pad(k, (0, dv - dq))
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return x[..., :dv]


def _plain_ops_faster(q: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    """Whether the plain ops beat SDPA for this CPU call: reduced precision, a mask that needs a gradient, or
    unmasked inference over short windows (<= 64 queries: fp32 IWSA windows 11.1 -> 8.6 ms; with Swin's bias
    mask the two are even, and SDPA stays)."""
    if q.dtype != torch.float32 or (attn_mask is not None and attn_mask.requires_grad):
        return True
    return attn_mask is None and q.shape[-2] <= 64 and not (torch.is_grad_enabled() and q.requires_grad)


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
