"""Straightforward ports of the official ScalableViT and PatchConvNet: the baseline of ``--compare port``.

``python -m lightning_vit benchmark --compare port`` times our backbones against what a user running the official
code would get. The ports compute the way the official implementations do (Yangr116/ScalableViT,
``image_classification/models/scalablevit.py``; facebookresearch/deit, ``patchconvnet_models.py``) and keep their op
order and memory layouts: (B, N, C) token sequences between layers, a transpose/reshape to NCHW and back around
every convolution, plain ``nn.Linear`` followed by ``nn.GELU`` modules, explicit ``softmax(q @ k^T * scale) @ v``
attention, the official window partition and merge, PEG and LIM, and the per-class heads of the multi-token model.
They are written for this project, not copied from those files.

A port's constructor takes exactly the keyword arguments of our class (:class:`ScalableViT`, :class:`PatchConvNet`)
and its state_dict has our class's keys and shapes (the official checkpoint keys), so :func:`build_port` loads our
model's weights into it strictly. Ports only classify: no ``features_only``, intermediates or checkpointing. They
accept the inputs the official code accepts: for ScalableViT H and W whose every stage map divides by the stage's
window (multiples of 224 with the 7x7 windows), for PatchConvNet a square token grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp
from timm.models._efficientnet_blocks import SqueezeExcite

from lightning_vit.backbones import patchconvnet, scalable_vit
from lightning_vit.backbones.patchconvnet import PatchConvNet
from lightning_vit.backbones.scalable_vit import ScalableViT

__all__ = ["PORTS", "PatchConvNetPort", "ScalableViTPort", "build_port"]


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


def _refuse_features_only(name: str, features_only: bool) -> None:
    if features_only:
        raise ValueError(f"{name}: features_only=True is not supported, a port is a classifier only")


# ScalableViT (Yangr116/ScalableViT) -----------------------------------------------------------------------------


def _split_windows(x: torch.Tensor, h: int, w: int, ws: int, num_heads: int) -> torch.Tensor:
    """Tokens (B, H*W, C) of a map divisible by ``ws`` -> per-head windows (B, nW, nh, ws*ws, C/nh), row-major."""
    b, _, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).transpose(2, 3)  # (B, H/ws, W/ws, ws, ws, C)
    return x.reshape(b, -1, ws * ws, num_heads, c // num_heads).permute(0, 1, 3, 2, 4)


def _merge_windows(x: torch.Tensor, h: int, w: int, ws: int) -> torch.Tensor:
    """Per-head windows (B, nW, nh, ws*ws, C/nh) -> map (B, H, W, C), the inverse of :func:`_split_windows`."""
    b, _, nh, _, hd = x.shape
    x = x.transpose(2, 3).reshape(b, h // ws, w // ws, ws, ws, nh * hd)  # (B, H/ws, W/ws, ws, ws, C)
    return x.transpose(2, 3).reshape(b, h, w, nh * hd)


class ConvPatchEmbed(scalable_vit.ConvPatchEmbed):
    """Our patch embedding's layers, the official output: map (B, C_in, H, W) -> tokens (B, H'*W', C), (H', W')."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (h, w)  # (B, N, C)


class PosCNN(scalable_vit.PosConv):
    """PEG with our layers: 3x3 depthwise conv plus residual, on tokens copied into a contiguous NCHW map."""

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        feat = x.transpose(1, 2).contiguous().view(b, c, h, w)  # (B, C, H, W)
        return (self.proj(feat) + feat).flatten(2).transpose(1, 2)  # (B, N, C)


class IWSA(nn.Module):
    """Window attention plus the LIM, on tokens (B, H*W, C) whose map divides by the window.

    q, k and v are each cut into windows; the LIM merges the v windows back into an NCHW image, runs its depthwise
    conv there and adds the result to the merged attention output before ``proj``.
    """

    def __init__(
        self, dim: int, num_heads: int, window_size: int, qkv_bias: bool, attn_drop: float, proj_drop: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ws = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.lim_func = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, c).permute(2, 0, 1, 3)  # (3, B, N, C)
        q, k, v = (_split_windows(t, h, w, self.ws, self.num_heads) for t in qkv)  # (B, nW, nh, ws*ws, hd)

        v_img = _merge_windows(v, h, w, self.ws).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
        lim = self.lim_func(v_img).flatten(2).transpose(1, 2).contiguous()  # (B, N, C)

        attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, nW, nh, ws*ws, ws*ws)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = _merge_windows(attn @ v, h, w, self.ws).reshape(b, n, c) + lim
        return self.proj_drop(self.proj(x))


class SSA(nn.Module):
    """Scalable self-attention on tokens (B, H*W, C): keys and values from a reduced map when ``sr_ratio`` > 1."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        c_ratio: float,
        qkv_bias: bool,
        attn_drop: float,
        proj_drop: float,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.dim_qk = int(dim * c_ratio)
        self.scale = (dim // num_heads * c_ratio) ** -0.5
        if sr_ratio > 1:
            self.q = nn.Linear(dim, self.dim_qk, bias=qkv_bias)
            self.reduction = nn.Sequential(
                nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, groups=dim), nn.Conv2d(dim, self.dim_qk, 1)
            )
            self.norm_act = nn.Sequential(nn.LayerNorm(self.dim_qk), nn.GELU())
            self.k = nn.Linear(self.dim_qk, self.dim_qk, bias=qkv_bias)
            self.v = nn.Linear(self.dim_qk, dim, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        nh = self.num_heads
        if self.sr_ratio > 1:
            # reshape of the transposed tokens is a view: the reduction convs get a channels-last map
            reduced = self.reduction(x.permute(0, 2, 1).reshape(b, c, h, w))  # (B, C', H/rn, W/rn)
            reduced = self.norm_act(reduced.reshape(b, self.dim_qk, -1).permute(0, 2, 1))  # (B, N', C')
            q = self.q(x).reshape(b, n, nh, self.dim_qk // nh).permute(0, 2, 1, 3)  # (B, nh, N, C'/nh)
            k = self.k(reduced).reshape(b, -1, nh, self.dim_qk // nh).permute(0, 2, 1, 3)  # (B, nh, N', C'/nh)
            v = self.v(reduced).reshape(b, -1, nh, c // nh).permute(0, 2, 1, 3)  # (B, nh, N', C/nh)
        else:
            q = self.q(x).reshape(b, n, nh, c // nh).permute(0, 2, 1, 3)  # (B, nh, N, C/nh)
            k, v = self.kv(x).reshape(b, n, 2, nh, c // nh).permute(2, 0, 3, 1, 4)  # 2 x (B, nh, N, C/nh)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class ScalableViTBlock(nn.Module):
    """``x + dp(attn(norm1 x))``, ``x + dp(mlp(norm2 x))`` on tokens (B, N, C)."""

    def __init__(self, dim: int, attn: IWSA | SSA, mlp_ratio: float, drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attn
        self.drop_path = _drop_path(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ScalableViTPort(nn.Module):
    """ScalableViT as the official code computes it; the arguments are those of :class:`ScalableViT`.

    Even blocks are IWSA, odd blocks SSA, a PEG follows block 0 of each stage. Weights come from
    :func:`build_port` (the constructor leaves PyTorch's default initialisation).

    Raises:
        ValueError: ``features_only=True``; in ``forward``, an input whose H or W is not a multiple of
            ``size_multiple`` (224 for 7x7 windows): the official code neither pads nor masks windows.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        depths: Sequence[int] = (2, 2, 20, 2),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        qkv_bias: bool = True,
        wss: Sequence[int] = (7, 7, 7, 7),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        c_ratios: Sequence[float] = (1.25, 1.25, 1.25, 1.0),
        head_hidden_size: int | None = 4096,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        features_only: bool = False,
    ) -> None:
        super().__init__()
        _refuse_features_only(type(self).__name__, features_only)
        # stage i has stride 4 * 2^i and windows of wss[i]: its map divides by the window iff H does by the product
        self.size_multiple = math.lcm(*(4 * 2**i * ws for i, ws in enumerate(wss)))
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        in_dims = (in_chans, *embed_dims[:-1])
        self.patch_embeds = nn.ModuleList(
            ConvPatchEmbed(c_in, c, 7 if i == 0 else 3, 4 if i == 0 else 2, partial(nn.LayerNorm, eps=1e-6))
            for i, (c_in, c) in enumerate(zip(in_dims, embed_dims))
        )
        self.pos_block = nn.ModuleList(PosCNN(c) for c in embed_dims)
        self.pos_drop = nn.Dropout(drop_rate)
        self.stages = nn.ModuleList()
        for i, c in enumerate(embed_dims):
            blocks = nn.ModuleList()
            for j in range(depths[i]):
                if j % 2 == 0:
                    attn = IWSA(c, num_heads[i], wss[i], qkv_bias, attn_drop_rate, drop_rate)
                else:
                    attn = SSA(c, num_heads[i], sr_ratios[i], c_ratios[i], qkv_bias, attn_drop_rate, drop_rate)
                blocks.append(ScalableViTBlock(c, attn, mlp_ratios[i], drop_rate, dpr[sum(depths[:i]) + j]))
            self.stages.append(blocks)
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        width = head_hidden_size or embed_dims[-1]
        classifier = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()
        if head_hidden_size:
            self.head = nn.Sequential(
                nn.Linear(embed_dims[-1], width), nn.LayerNorm(width, eps=1e-6), nn.GELU(), classifier
            )
        else:
            self.head = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, H, W), H and W multiples of ``size_multiple`` -> logits (B, num_classes)."""
        b, _, h, w = x.shape
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"{type(self).__name__} takes H and W that are multiples of {self.size_multiple} (every stage map a "
                f"multiple of its window, as the official code needs), got {h}x{w}"
            )
        last = len(self.stages) - 1
        for i, blocks in enumerate(self.stages):
            x, (h, w) = self.patch_embeds[i](x)  # (B, N_i, C_i)
            x = self.pos_drop(x)
            for j, blk in enumerate(blocks):
                x = blk(x, h, w)
                if j == 0:
                    x = self.pos_block[i](x, h, w)
            if i < last:
                x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # (B, C_i, H_i, W_i)
        return self.head(self.norm(x).mean(dim=1))


# PatchConvNet (facebookresearch/deit) ---------------------------------------------------------------------------


class ConvStem(patchconvnet.ConvStem):
    """Our stem's layers (four 3x3 stride-2 convs), the official output: tokens (B, N, D) of a square grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        x = self.proj(x)  # (B, D, h, w)
        if x.shape[2] != x.shape[3]:
            raise ValueError(
                f"PatchConvNetPort needs a square token grid, as the official code assumes: a {size[0]}x{size[1]} "
                f"input gives {x.shape[2]}x{x.shape[3]} tokens"
            )
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class ConvBlocksSE(nn.Module):
    """1x1 conv, GELU, depthwise 3x3, GELU, squeeze-excite, 1x1 conv on tokens (B, N, C) of a square grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv_pos = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.GELU(),
            SqueezeExcite(dim, rd_ratio=0.25),
            nn.Conv2d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        side = int(n**0.5)
        # the reshape of the transposed tokens is a view, so the convs run on a channels-last map
        x = self.qkv_pos(x.transpose(-1, -2).reshape(b, c, side, side))  # (B, C, side, side)
        return x.reshape(b, c, n).transpose(-1, -2)  # (B, N, C)


class Block(nn.Module):
    """Trunk block ``x + dp(gamma_1 * attn(norm1 x))`` on tokens (B, N, C)."""

    def __init__(self, dim: int, drop_path: float, init_values: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ConvBlocksSE(dim)
        self.drop_path = _drop_path(drop_path)
        self.gamma_1 = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))


class LearnedAggregation(nn.Module):
    """One-head attention whose queries are the K class tokens at the front of (B, K + N, C).

    Keys and values are all tokens for the single class token, the patch tokens only for the multi-token model.
    """

    def __init__(self, dim: int, num_cls: int, attend_to_cls: bool, qkv_bias: bool, proj_drop: float) -> None:
        super().__init__()
        self.num_cls = num_cls
        self.attend_to_cls = attend_to_cls
        self.scale = dim**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        keys = x if self.attend_to_cls else x[:, self.num_cls :]
        q = self.q(x[:, : self.num_cls]).unsqueeze(1) * self.scale  # (B, 1, K, C): one head
        k = self.k(keys).unsqueeze(1)  # (B, 1, M, C)
        v = self.v(keys).unsqueeze(1)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, 1, K, M)
        x = (attn @ v).transpose(1, 2).reshape(b, self.num_cls, c)
        return self.proj_drop(self.proj(x))


class ClassTokenBlock(nn.Module):
    """``cls += gamma_1 * attn(norm1([cls, x]))``, ``cls += gamma_2 * mlp(norm2 cls)``."""

    def __init__(
        self,
        dim: int,
        num_cls: int,
        attend_to_cls: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        init_values: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = LearnedAggregation(dim, num_cls, attend_to_cls, qkv_bias, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.gamma_1 = nn.Parameter(torch.full((dim,), init_values))
        self.gamma_2 = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, C), class tokens (B, K, C) -> class tokens (B, K, C)."""
        cls = cls + self.gamma_1 * self.attn(self.norm1(torch.cat((cls, x), dim=1)))
        return cls + self.gamma_2 * self.mlp(self.norm2(cls))


class PatchConvNetPort(nn.Module):
    """PatchConvNet as the official code computes it; the arguments are those of :class:`PatchConvNet`.

    The final norm runs over the class and patch tokens together and the multi-token model applies its
    ``Linear(D, 1)`` heads one class at a time, as the official code does. Unlike it, the multi-token model takes any
    ``num_classes`` (the official attention hard-wires 1000). Weights come from :func:`build_port`.

    Raises:
        ValueError: ``features_only=True``; in ``forward``, an input whose token grid is not square.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 60,
        mlp_ratio_token_only: float = 3.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float = 1e-4,
        multi_token: bool = False,
        features_only: bool = False,
    ) -> None:
        super().__init__()
        _refuse_features_only(type(self).__name__, features_only)
        self.multi_token = multi_token
        num_cls = num_classes if multi_token else 1
        self.patch_embed = ConvStem(in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, num_cls, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, drop_path_rate, init_values) for _ in range(depth))
        self.blocks_token_only = nn.ModuleList(
            [
                ClassTokenBlock(
                    embed_dim, num_cls, not multi_token, mlp_ratio_token_only, qkv_bias, drop_rate, init_values
                )
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if multi_token:
            self.head = nn.ModuleList(nn.Linear(embed_dim, 1) for _ in range(num_classes))
        else:
            self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, H, W) with a square token grid -> logits (B, num_classes)."""
        x = self.patch_embed(x)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, K, D)
        for blk in self.blocks:
            x = blk(x)
        for blk in self.blocks_token_only:
            cls = blk(x, cls)
        x = self.norm(torch.cat((cls, x), dim=1))  # (B, K + N, D)
        if not self.multi_token:
            return self.head(x[:, 0])
        return torch.cat([head(x[:, i]) for i, head in enumerate(self.head)], dim=1)  # (B, K)


PORTS: dict[type[nn.Module], type[nn.Module]] = {ScalableViT: ScalableViTPort, PatchConvNet: PatchConvNetPort}


def build_port(model: nn.Module) -> nn.Module:
    """The port of ``model``, holding its weights, on its device and dtype and in its train/eval mode.

    Args:
        model: one of our backbones whose class is a key of :data:`PORTS`, built by ``create_backbone`` (which
            records its constructor arguments as ``model.model_args``).

    Raises:
        ValueError: ``model``'s class has no port, or ``model`` has no ``model_args``.
    """
    port_cls = PORTS.get(type(model))
    if port_cls is None:
        known = ", ".join(cls.__name__ for cls in PORTS)
        raise ValueError(f"no port of {type(model).__name__}: ports exist for {known}")
    model_args = getattr(model, "model_args", None)
    if model_args is None:
        raise ValueError(
            f"this {type(model).__name__} has no model_args (its constructor arguments): build it with "
            "lightning_vit.create_backbone"
        )
    port = port_cls(**model_args)
    param = next(model.parameters(), None)
    if param is not None:
        port = port.to(device=param.device, dtype=param.dtype)
    port.load_state_dict(model.state_dict(), strict=True)
    return port.train(model.training)
