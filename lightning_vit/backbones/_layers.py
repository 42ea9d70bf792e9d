"""Small layers and helpers shared by the backbone families."""

from __future__ import annotations

import functools
import platform
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch.autograd.function import once_differentiable

from lightning_vit.runtime import cpu_bf16_kernels

__all__ = [
    "DepthwiseConv2d",
    "Linear",
    "Mlp",
    "attention",
    "init_linear_and_norm",
    "linear",
    "pad_to_multiple",
    "window_partition",
    "window_reverse",
]

# oneDNN's matmul with a fused epilogue, what Inductor's CPU backend calls; absent from builds without oneDNN.
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


@functools.cache
def _cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...); ``platform.processor()`` where Linux's
    ``/proc/cpuinfo`` is absent."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return platform.processor()


@functools.cache
def _onednn_fp32_gradients() -> bool:
    """Whether fp32 linears that need a gradient go to oneDNN rather than MKL (``F.linear``).

    MKL picks its fast kernels on Intel processors only: on an AMD EPYC its fp32 matmuls ran 1.3-1.6x slower than
    oneDNN's (Swin-T's layers, 2 threads), while on an Intel Xeon (Sapphire Rapids class, 2 threads) MKL's forward
    and backward are the faster ones for most of Swin-T's and CoaT's layers (a Swin-T fp32 training step: linears
    757 ms with MKL, 870 ms with oneDNN). See README "Performance".
    """
    return "intel" not in _cpu_vendor().lower()


#: hidden-map elements (rows x hidden width) from which an fp32 inference MLP on a processor without avx512 runs in
#: row chunks (:meth:`Mlp.forward`): 2^23 fp32 values, 32 MB, about a server processor's last-level cache; and the
#: hidden-map elements of one chunk (4 MB)
_AVX2_CHUNKED_MLP_ELEMENTS = 2**23
_MLP_CHUNK_ELEMENTS = 2**20


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``softmax(q k^T * scale + attn_mask) v`` over (B, ..., N, d) tensors, by the fastest exact route for the call.

    ``attn_mask`` is additive, (M, ..., N, N) with as many dimensions as the scores, and applies to batch entry
    ``i`` as ``attn_mask[i % M]``: M = 1 or B broadcast as usual, and a per-window mask (M windows, B = batch x M in
    :func:`window_partition` order) is added to the scores viewed as (B / M, M, ...), without a B-sized copy.
    A mask of fewer dimensions broadcasts as usual.

    A mask in a wider dtype than q (an fp32 position bias under bf16 autocast) makes the scores and their softmax
    that dtype, as in timm's and the official code, where the fp32 bias is added to the bf16 scores: more accurate,
    and on CPU also faster, the bf16 softmax over rows of 49 being the slower one. The probabilities are cast back
    to v's dtype for the last product.

    ``scaled_dot_product_attention`` where its fused kernels apply. On CPU those kernels cover fp32 only, and an
    additive mask that needs a gradient (a learned position bias) also sends SDPA to its unfused path, which on
    CPU is 2-6x slower than the three plain ops (measured at Swin-T stage-0 windows: bf16 training 47 -> 21 ms,
    fp32 training 74 -> 57 ms; see README "Performance"); those calls, and inference over short windows, take the
    plain ops. The fused kernels also
    need one head width for q, k and v; a narrower v (or q/k) is zero-padded, which is exact: zero q/k channels
    add nothing to the scores, zero v channels give zero outputs, which are sliced off.
    """
    # a trace takes the grouped route for M = 1 too, so that sizes giving other window counts export as well
    grouped = (
        attn_mask is not None and attn_mask.dim() == q.dim() and (attn_mask.shape[0] != 1 or torch.jit.is_tracing())
    )
    if q.device.type == "cpu" and _plain_ops_faster(q, k, attn_mask):
        attn = (q * scale) @ k.transpose(-2, -1)
        if grouped:
            attn = (attn.view(-1, attn_mask.shape[0], *attn.shape[1:]) + attn_mask).view(attn.shape)
        elif attn_mask is not None:
            attn = attn + attn_mask
        attn = attn.softmax(dim=-1)
        if dropout_p:
            attn = F.dropout(attn, dropout_p)
        return attn.to(v.dtype) @ v
    if grouped:  # SDPA takes a mask that broadcasts: (B / M, M, ...) -> (B, ...)
        m = attn_mask.shape[0]
        attn_mask = attn_mask.expand(q.shape[0] // m, *attn_mask.shape).reshape(q.shape[0], *attn_mask.shape[1:])
    if attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    dq, dv = q.shape[-1], v.shape[-1]
    if dq > dv:
        v = F.pad(v, (0, dq - dv))
    elif dq < dv:
        q, k = F.pad(q, (0, dv - dq)), F.pad(k, (0, dv - dq))
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    return x[..., :dv]


def _plain_ops_faster(q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None) -> bool:
    """Whether the plain ops beat SDPA for this CPU call: reduced precision, a mask that needs a gradient, or
    inference over short windows (<= 64 queries), where SDPA's kernel splits too little work over many small
    problems. Unmasked fp32 IWSA windows: 11.1 -> 8.6 ms (avx512). With Swin's bias and shift mask the two are
    even on avx512 and the plain ops 1.4-1.7x faster on AVX2 (an AMD EPYC; Swin-T stage 0, 512 windows: 28.2 ->
    16.6 ms). Long sequences (ScalableViT's SSA, 3136 queries) stay with SDPA, 1.6-3x faster there.

    On processors without avx512 SDPA's backward is the slower one too while there are few keys (<= 64): a
    ScalableViT-S training step spent 419 ms in SDPA against 220 ms in the port's plain ops (AVX2 AMD EPYC).

    Under ``torch.compile`` these two eager choices give way to SDPA: Inductor (torch 2.14) failed to compile the
    plain ops' backward over dynamic shapes (``cannot determine truth value of Relational``), and fuses on its own.
    """
    if q.dtype != torch.float32 or (attn_mask is not None and attn_mask.requires_grad):
        return True
    compiling = torch.compiler.is_compiling()
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return not compiling and k.shape[-2] <= 64 and not _avx512()  # no processor query inside a trace
    return q.shape[-2] <= 64 and (attn_mask is None or not compiling)


@functools.cache
def _avx512() -> bool:
    """Whether torch's CPU kernels run avx512 code on this processor (not on AVX2-only ones)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: Literal["gelu"] | None = None
) -> torch.Tensor:
    """``F.linear`` (then the exact, erf GELU when ``activation="gelu"``) by the fastest exact route for the call.

    On CPU, fp32 matmuls go to MKL, which on AMD processors with avx512 runs far below oneDNN (Swin-T's layers, 2
    threads on an EPYC: 1.3-1.6x slower); bf16 ones already go to oneDNN, but GELU then costs a pass of its own over the
    4x-wide hidden map (13 ms of a 20 ms fc1 at Swin-T stage 0). So on CPU in fp32 or bf16 (autocast included):

    - no gradient needed (inference, frozen layers): oneDNN's matmul, GELU fused in its epilogue;
    - gradient in fp32, on processors other than Intel's: the same matmul, and oneDNN for the input's gradient, in
      :class:`_OneDnnLinear`; on Intel's, ``F.linear`` (MKL is the faster there, see
      :func:`_onednn_fp32_gradients`);
    - gradient in bf16: ``F.linear``, which autocast and oneDNN serve well.

    All of this on processors with avx512 only; without it (AVX2) every call takes ``F.linear``, see
    :func:`_onednn_dtype`. bf16 calls take oneDNN only where this CPU has its bf16 kernels
    (:func:`lightning_vit.runtime.cpu_bf16_kernels`). Traced, scripted, compiled and exported calls, other devices
    and dtypes take ``F.linear``, so exported graphs hold standard ops and ``torch.compile`` makes its own fusions.
    Outputs equal ``F.linear``'s up to rounding (summation order; the fused GELU rounds once in bf16 instead of
    twice).
    """
    if activation not in (None, "gelu"):
        raise ValueError(f"activation: expected None or 'gelu', got {activation!r}")
    dtype = _onednn_dtype(x, weight)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if dtype is None or (needs_grad and (dtype != torch.float32 or not _onednn_fp32_gradients())):
        x = F.linear(x, weight, bias)
        return F.gelu(x) if activation == "gelu" else x
    x, weight = x.to(dtype), weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    if needs_grad:
        x = _OneDnnLinear.apply(x, weight, bias)
        return F.gelu(x) if activation == "gelu" else x
    out = _ONEDNN_LINEAR(x.reshape(-1, x.shape[-1]), weight, bias, activation or "none", [], "none")
    return out.view(*x.shape[:-1], weight.shape[0])


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The compute dtype of a CPU linear that oneDNN can take (fp32 or bf16, autocast's if it is on), else None.

    None on processors without avx512: there oneDNN cannot build a bf16 matmul, and MKL's fp32 one (``F.linear``)
    was the faster on an AVX2 AMD EPYC (2 threads), in inference 1.2-1.6x per layer on token maps of up to 6272
    rows (Swin-T's stage-1 fc1 with GELU, 6272 rows, 192 -> 768: 13.5-14.0 against 20.7-21.2 ms; stage 2's fc1
    12.4-13.5 against 19.6-20.6; CoaT-Lite's 320 -> 1280 fc1 35.7 against 54.4), and in training steps, alternating
    in one process (8 and 14 rounds): CoaT Tiny 2626 -> 2523 and 2647 -> 2512 ms, Swin-T 1937 -> 1845 and 1793 ->
    1720, CoaT-Lite Tiny 879 -> 856 and 891 -> 848, ScalableViT-S 2165 -> 2109 (against oneDNN for the layers of
    >= 4096 rows, which an earlier session had measured the faster on such a processor). oneDNN's fused GELU led
    only over hidden maps larger than the cache (stage 0, 25088 rows), which :class:`Mlp` splits into chunks
    instead.
    """
    if _ONEDNN_LINEAR is None or not torch.backends.mkldnn.enabled or not _eager_cpu_call(x) or x.numel() == 0:
        return None
    if not _avx512():  # AVX2 only: MKL (above)
        return None
    if torch.is_autocast_enabled("cpu") and x.is_floating_point():
        dtype = torch.get_autocast_dtype("cpu")
    elif x.dtype == weight.dtype:
        dtype = x.dtype
    else:
        return None
    if dtype == torch.bfloat16:
        return dtype if cpu_bf16_kernels() else None
    return dtype if dtype == torch.float32 else None


def _eager_cpu_call(x: torch.Tensor) -> bool:
    """Whether ``x`` is a CPU tensor of an eager call: not traced, scripted, compiled or exported."""
    return not (
        x.device.type != "cpu"
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


class _OneDnnLinear(torch.autograd.Function):
    """fp32 linear whose forward and input gradient run in oneDNN; the weight gradient is one ``mm``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = _ONEDNN_LINEAR(x.reshape(-1, x.shape[-1]), weight, bias, "none", [], "none")
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])  # (M, out)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # grad @ W, as a linear with weight W^T
            grad_x = _ONEDNN_LINEAR(grad, weight.t().contiguous(), None, "none", [], "none").view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t().mm(x.reshape(-1, x.shape[-1]))  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, with timm's ``Mlp`` parameter names; the GELU fuses into fc1
    where :func:`linear` can, and inference over large maps runs in row chunks where that is the faster (see
    :meth:`_forward_in_chunks`)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = Linear(hidden_features, in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._in_chunks(x):
            return self._forward_in_chunks(x)
        x = self.drop1(linear(x, self.fc1.weight, self.fc1.bias, activation="gelu"))
        return self.drop2(self.fc2(x))

    def _in_chunks(self, x: torch.Tensor) -> bool:
        """Whether this call runs in row chunks: fp32 inference (no gradient, no autocast) on a processor without
        avx512 whose hidden map would exceed the cache (``_AVX2_CHUNKED_MLP_ELEMENTS``)."""
        if x.numel() // max(x.shape[-1], 1) * self.fc1.out_features < _AVX2_CHUNKED_MLP_ELEMENTS:
            return False
        if x.dtype != torch.float32 or not _eager_cpu_call(x) or torch.is_autocast_enabled("cpu"):
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        return not _avx512()

    def _forward_in_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` over ``_MLP_CHUNK_ELEMENTS`` hidden values at a time, written into one output, so that
        each chunk's hidden map stays in the cache between fc1 and fc2 instead of going to memory and back.

        On an AVX2 AMD EPYC (2 threads, fp32, median of 25 calls) Swin-T's stage-0 MLP (25088 rows, 96 -> 384 ->
        96) took 28-29 ms in chunks of 2^19-2^20 values against 63-65 ms whole in MKL and 47.5 ms with oneDNN's
        fused GELU; CoaT-Lite Tiny's stage-1 MLP (25096 rows, 64 -> 512 -> 64) 28 against 74-79 ms, CoaT Tiny's
        (152 -> 608 -> 152) 64-66 against 119-123 ms. Below 2^23 hidden values the gain fades, then turns (12544 x
        384: 15 against 15-22 ms; 6272 x 768, Swin-T's stage 1: chunks 0-13% slower). Each output row is computed
        as unchunked, by the same kernels.
        """
        flat = x.reshape(-1, x.shape[-1])
        out = flat.new_empty(flat.shape[0], self.fc2.out_features)
        step = max(_MLP_CHUNK_ELEMENTS // self.fc1.out_features, 1)
        weight = self.fc2.weight.t()
        for start in range(0, flat.shape[0], step):
            hidden = self.drop1(linear(flat[start : start + step], self.fc1.weight, self.fc1.bias, activation="gelu"))
            torch.addmm(self.fc2.bias, hidden, weight, out=out[start : start + step])  # F.linear's own call
        return self.drop2(out).view(*x.shape[:-1], out.shape[-1])


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise ``nn.Conv2d`` (``groups`` = input = output channels; same parameters and state dict) whose
    gradients, on CPU under reduced-precision autocast, are computed in fp32 for kernels other than 3x3 stride 1.

    oneDNN's bf16 backward kernels for depthwise convs are fast for 3x3 stride 1 only. At other kernels they ran
    3-10x slower than its fp32 ones (2 threads, Intel Xeon with AMX, batch 8; input and weight gradient together,
    channels-last): CoaT's 7x7 over 24 channels at 56x56 in 16.7 -> 5.5 ms, ScalableViT's 8x8 stride-8 reduction
    over 64 channels at 56x56 in 28 -> 2.9 ms. So when a gradient is needed there, the conv takes the fp32 input
    and weight and returns fp32, as if autocast listed it as an fp32 op; the gradients accumulate in fp32 (more
    accurate than bf16's). Forward-only calls (inference, ``no_grad``) keep autocast's dtype, which is the faster
    one. At 3x3 stride 1 the reverse holds (fp32 up to 8x slower), and autocast's dtype stays.

    Channels-last input, (B, C, H, W) viewed from (B, H, W, C) memory, is oneDNN's fast layout on CPU in every
    dtype (the 7x7 fp32 weight gradient: 16 ms from NCHW, 4.4 ms channels-last); the output keeps it.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
    ) -> None:
        super().__init__(channels, channels, kernel_size, stride, padding, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fp32_gradients(x):
            bias = self.bias.float() if self.bias is not None else None
            with torch.autocast("cpu", enabled=False):
                return self._conv_forward(x.float(), self.weight.float(), bias)
        return super().forward(x)

    def _fp32_gradients(self, x: torch.Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") != torch.float32
            and torch.is_grad_enabled()
            and (x.requires_grad or self.weight.requires_grad)
            and (self.kernel_size != (3, 3) or self.stride != (1, 1))
        )


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
