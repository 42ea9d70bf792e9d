"""ScalableViT: Scalable Vision Transformer.

Paper: Yang, Ma, Wu, Tang, Xiao, Zheng, Li, "ScalableViT: Rethinking the Context-oriented Generalization of Vision
Transformer", ECCV 2022 (arXiv 2203.10790).

Stages alternate two attentions: Interactive Window Self-Attention (IWSA: window attention plus a Local
Interaction Module, a depthwise conv over the values in image layout) and Scalable Self-Attention (SSA: keys and
values from a spatially reduced map, query/key widths scaled by a channel ratio). Parameter names, their order and
the initialisation follow the official code, so official checkpoints load key for key.

Unlike the official code, which needs H and W to be multiples of 224, any input of at least 32x32 works: patch
embeddings give ceil(H / stride) tokens, IWSA pads each map to a multiple of the window and masks the padded
tokens out as keys, and SSA's strided reduction floors. Where the official model accepts the size, no padding
happens and the math is the official one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache, partial

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from lightning_vit.backbones._layers import (
    DepthwiseConv2d,
    Linear,
    Mlp,
    attention,
    init_linear_and_norm,
    pad_to_multiple,
    window_partition,
    window_reverse,
)
from lightning_vit.backbones._registry import build_model, register_backbone

__all__ = ["ScalableViT", "checkpoint_filter_fn"]


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W) view (channels-last memory, which the CPU and cuDNN convs take as is)."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C) view."""
    return x.permute(0, 2, 3, 1)


@lru_cache(maxsize=64)
def _window_key_mask(h: int, w: int, window_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive mask (nW, 1, 1, ws*ws) hiding, as keys, the tokens that padding a (h, w) map to the window adds.

    ``None`` when the map needs no padding. Every window holds at least one real token (padding is shorter than a
    window), so no attention row is fully masked.
    """
    if h % window_size == 0 and w % window_size == 0:
        return None
    # Built outside inference mode so that a mask first made in validation also serves training.
    with torch.inference_mode(False):
        real = torch.ones(1, h, w, 1, device=device, dtype=dtype)
        real = window_partition(pad_to_multiple(real, window_size), window_size)  # (nW, ws*ws, 1)
        mask = torch.zeros_like(real).masked_fill_(real == 0, float("-inf"))
        return mask.view(real.shape[0], 1, 1, -1)  # (nW, 1, 1, ws*ws)


class ConvPatchEmbed(nn.Module):
    """Overlapping conv patch embedding followed by LayerNorm: (B, C_in, H, W) -> (B, H', W', C)."""

    def __init__(
        self, in_chans: int, embed_dim: int, kernel_size: int, stride: int, norm_layer: Callable[..., nn.Module]
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_nhwc(self.proj(x)))


class PosConv(nn.Module):
    """Positional encoding generator (PEG, arXiv 2102.10882): 3x3 depthwise conv plus residual, on (B, H, W, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _nchw(x)
        return _nhwc(self.proj(x) + x)


class IWSA(nn.Module):
    """Interactive Window Self-Attention on (B, H, W, C).

    Plain non-overlapping ``window_size`` windows (no shift, no relative bias). The Local Interaction Module
    ``lim_func`` (3x3 depthwise conv) runs over the values laid out as the whole image and is added to the merged
    window outputs before ``proj``, which lets information cross window borders. Maps that are not multiples of
    the window are padded at the bottom/right; the padded tokens are masked out as keys and cropped afterwards.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"IWSA: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.lim_func = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        qkv = self.qkv(x.reshape(b, h * w, c)).view(b, h, w, 3 * c)  # (B, H, W, 3C); Linear on 3-d tokens (below)
        lim = _nhwc(self.lim_func(_nchw(qkv[..., 2 * c :])))  # (B, H, W, C)

        qkv = pad_to_multiple(qkv, ws)
        hp, wp = qkv.shape[1:3]
        qkv = window_partition(qkv, ws).view(-1, ws * ws, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B*nW, nh, ws*ws, hd)
        mask = _window_key_mask(h, w, ws, x.device, q.dtype)  # (nW, 1, 1, ws*ws): `attention` applies it per window
        x = attention(q, k, v, self.scale, mask, self.attn_drop if self.training else 0.0)
        x = window_reverse(x.transpose(1, 2).reshape(-1, ws * ws, c), ws, hp, wp)  # (B, Hp, Wp, C)
        x = (x[:, :h, :w] + lim).reshape(b, h * w, c)
        return self.proj_drop(self.proj(x)).view(b, h, w, c)


class SSA(nn.Module):
    """Scalable Self-Attention on (B, H, W, C).

    With ``sr_ratio`` rn > 1 the keys and values come from a reduced map: depthwise conv (kernel = stride = rn,
    floored) -> 1x1 conv to C' = int(C * c_ratio) -> LayerNorm (eps 1e-5, as the official code) -> GELU. Queries and
    keys have C' channels, values C. With rn = 1 (``q`` and ``kv``) all widths are C. Either way the scale is
    (head_dim * c_ratio) ** -0.5 with head_dim = C / num_heads, as the official code computes it.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        c_ratio: float = 1.25,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.scale = (dim // num_heads * c_ratio) ** -0.5
        self.attn_drop = attn_drop
        if sr_ratio > 1:
            dim_qk = int(dim * c_ratio)
            if dim % num_heads or dim_qk % num_heads:
                raise ValueError(f"SSA: dim {dim} and int(dim * c_ratio) = {dim_qk} must divide by {num_heads} heads")
            self.q = Linear(dim, dim_qk, bias=qkv_bias)
            self.reduction = nn.Sequential(DepthwiseConv2d(dim, sr_ratio, stride=sr_ratio), nn.Conv2d(dim, dim_qk, 1))
            self.norm_act = nn.Sequential(nn.LayerNorm(dim_qk), nn.GELU())
            self.k = Linear(dim_qk, dim_qk, bias=qkv_bias)
            self.v = Linear(dim_qk, dim, bias=qkv_bias)
        else:
            if dim % num_heads:
                raise ValueError(f"SSA: dim {dim} is not divisible by num_heads {num_heads}")
            self.q = Linear(dim, dim, bias=qkv_bias)
            self.kv = Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        nh = self.num_heads
        tokens = x.reshape(b, h * w, c)
        q = self.q(tokens).view(b, h * w, nh, -1).transpose(1, 2)  # (B, nh, N, C'/nh)
        if self.sr_ratio > 1:
            if min(h, w) < self.sr_ratio:
                raise ValueError(
                    f"SSA with sr_ratio {self.sr_ratio} needs a map of at least that size, got {h}x{w} "
                    "(ScalableViT takes images of at least 32x32)"
                )
            kv = self.norm_act(_nhwc(self.reduction(_nchw(x))).flatten(1, 2))  # (B, N', C')
            k = self.k(kv).view(b, kv.shape[1], nh, -1).transpose(1, 2)  # (B, nh, N', C'/nh)
            v = self.v(kv).view(b, kv.shape[1], nh, -1).transpose(1, 2)  # (B, nh, N', C/nh)
        else:
            k, v = self.kv(tokens).view(b, h * w, 2, nh, -1).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, nh, N, C/nh)
        x = attention(q, k, v, self.scale, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, h * w, c)
        return self.proj_drop(self.proj(x)).view(b, h, w, c)  # (B, H, W, C)


class ScalableViTBlock(nn.Module):
    """Pre-norm transformer block on (B, H, W, C): ``x + dp(attn(norm1 x))``, then ``x + dp(mlp(norm2 x))``."""

    def __init__(
        self,
        dim: int,
        attn: IWSA | SSA,
        mlp_ratio: float = 4.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = x + self.drop_path(self.attn(self.norm1(x)))
        # the Linear layers see 3-d tokens: CPU Linear is slower on 4-d input (bf16 up to 1.5x; README Performance)
        x = x.reshape(b, h * w, c)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.view(b, h, w, c)


class ScalableViT(nn.Module):
    """ScalableViT: four stages of alternating IWSA (even blocks) and SSA (odd blocks), strides 4, 8, 16, 32.

    Each stage is a conv patch embedding (stage 0: kernel 7, stride 4; later: kernel 3, stride 2), its blocks, and a
    PEG (``pos_block``) after the first block. The classifier is ``norm`` -> mean over tokens -> ``head``: an MLP
    (Linear to ``head_hidden_size``, LayerNorm, GELU, Linear) or, with ``head_hidden_size=None``, one Linear.

    Args:
        in_chans: input image channels.
        num_classes: classifier outputs; 0 gives the pooled pre-logits features (the MLP head's hidden layer if any).
        embed_dims: channels per stage.
        num_heads: attention heads per stage.
        depths: blocks per stage.
        mlp_ratios: MLP hidden width / channels, per stage.
        qkv_bias: bias in the query/key/value projections.
        wss: IWSA window size per stage.
        sr_ratios: SSA spatial reduction ratio rn per stage.
        c_ratios: SSA channel ratio rc per stage.
        head_hidden_size: width of the MLP head (4096 in the official models); None for a single Linear head.
        drop_rate: dropout after the patch embeddings, the attention projections and in the MLPs (official
            ``drop_rate``).
        attn_drop_rate: attention-weight dropout.
        drop_path_rate: stochastic depth, ramped linearly from 0 over all blocks.
        features_only: the dense form for detection/segmentation: no ``norm`` and no ``head``, ``forward`` returns
            the four stage maps (B, C_i, H / 2^(i+2), W / 2^(i+2)).
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
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.features_only = features_only
        self.num_classes = 0 if features_only else num_classes
        self.num_features = embed_dims[-1]
        self.head_hidden_size = head_hidden_size or self.num_features
        self.grad_checkpointing = False
        self.feature_info = [
            dict(num_chs=c, reduction=4 * 2**i, module=f"stages.{i}") for i, c in enumerate(embed_dims)
        ]

        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        in_dims = (in_chans, *embed_dims[:-1])
        self.patch_embeds = nn.ModuleList(
            ConvPatchEmbed(c_in, c, kernel_size=7 if i == 0 else 3, stride=4 if i == 0 else 2, norm_layer=norm_layer)
            for i, (c_in, c) in enumerate(zip(in_dims, embed_dims))
        )
        self.pos_block = nn.ModuleList(PosConv(c) for c in embed_dims)
        self.pos_drop = nn.Dropout(drop_rate)
        self.stages = nn.ModuleList()
        for i, c in enumerate(embed_dims):
            blocks = nn.ModuleList()
            for j in range(depths[i]):
                if j % 2 == 0:
                    attn = IWSA(c, num_heads[i], wss[i], qkv_bias, attn_drop_rate, drop_rate)
                else:
                    attn = SSA(c, num_heads[i], sr_ratios[i], c_ratios[i], qkv_bias, attn_drop_rate, drop_rate)
                drop_path = dpr[sum(depths[:i]) + j]
                blocks.append(ScalableViTBlock(c, attn, mlp_ratios[i], drop_rate, drop_path, norm_layer))
            self.stages.append(blocks)

        self.norm = nn.Identity() if features_only else norm_layer(self.num_features)
        self.head = nn.Identity()
        if not features_only:
            if head_hidden_size:  # official keys head.0 (Linear), head.1 (LN), head.3 (the classifier)
                self.head = nn.Sequential(
                    nn.Linear(self.num_features, head_hidden_size),
                    norm_layer(head_hidden_size),
                    nn.GELU(),
                    nn.Identity(),
                )
            self.reset_classifier(num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        init_linear_and_norm(m)
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"pos_block.{n}" for n, _ in self.pos_block.named_parameters()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embeds\.0",
            blocks=[
                (r"^(?:patch_embeds|pos_block|stages)\.(\d+)", None),
                (r"^norm", (99999,)),
            ]
            if coarse
            else [
                (r"^stages\.(\d+)\.(\d+)", None),
                (r"^(?:patch_embeds|pos_block)\.(\d+)", (0,)),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head[-1] if isinstance(self.head, nn.Sequential) else self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last Linear of the head (the MLP head's hidden layer is kept, as timm does)."""
        if self.features_only:
            raise RuntimeError("a features_only ScalableViT has no classifier")
        self.num_classes = num_classes
        fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(fc)
        if isinstance(self.head, nn.Sequential):
            self.head[-1] = fc
        else:
            self.head = fc

    def _forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i`` on images (B, 3, H, W) for i = 0, on the previous stage's (B, H, W, C) otherwise."""
        x = self.pos_drop(self.patch_embeds[i](x if i == 0 else _nchw(x)))
        for j, blk in enumerate(self.stages[i]):
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if j == 0:
                x = self.pos_block[i](x)
        return x  # (B, H / 2^(i+2), W / 2^(i+2), C_i)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final features (B, C, H/32, W/32), after ``norm`` (none in the features_only form)."""
        for i in range(len(self.stages)):
            x = self._forward_stage(i, x)
        return _nchw(self.norm(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stage outputs (strides 4, 8, 16, 32), PEG included.

        Args:
            x: images (B, C_in, H, W), any H, W >= 32.
            indices: stages to return: None for all, an int n for the last n, or a sequence of indices 0-3.
            norm: apply ``norm`` to the last stage's map.
            output_fmt: ``NCHW`` or ``NHWC``.
            intermediates_only: return only the maps (and stop after the last one requested).

        Returns:
            The maps, or ``(forward_features(x), maps)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        last = len(self.stages) - 1
        take_indices, max_index = feature_take_indices(last + 1, indices)
        intermediates = []
        for i in range(max_index + 1 if intermediates_only else last + 1):
            x = self._forward_stage(i, x)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                intermediates.append(_nchw(y) if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return _nchw(self.norm(x)), intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        if pre_logits:
            return self.head[:-1](x) if isinstance(self.head, nn.Sequential) else x
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, intermediates_only=True)
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ScalableViT) -> dict[str, torch.Tensor]:
    """Convert an official ScalableViT checkpoint (``{"model": state_dict}`` or a bare state_dict) to ``model``.

    The keys are already the model's; classification-only entries (``norm``, ``head``) that ``model`` lacks (the
    features_only form, or ``num_classes=0``) are dropped.
    """
    state_dict = state_dict.get("model", state_dict)
    own = model.state_dict()
    return {k: v for k, v in state_dict.items() if k in own or not k.startswith(("norm.", "head."))}


def _create_scalable_vit(variant: str, pretrained: bool = False, **kwargs) -> ScalableViT:
    return build_model(ScalableViT, variant, pretrained, **kwargs)


@register_backbone(timm_register=True)
def scalable_vit_small(pretrained: bool = False, **kwargs) -> ScalableViT:
    model_args = dict(embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16), depths=(2, 2, 20, 2))
    return _create_scalable_vit("scalable_vit_small", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def scalable_vit_small_0(pretrained: bool = False, **kwargs) -> ScalableViT:
    model_args = dict(
        embed_dims=(64, 128, 256, 512),
        num_heads=(2, 4, 8, 16),
        depths=(2, 2, 20, 2),
        c_ratios=(1.25, 1.25, 1.25, 1.25),
        head_hidden_size=None,
    )
    return _create_scalable_vit("scalable_vit_small_0", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def scalable_vit_base(pretrained: bool = False, **kwargs) -> ScalableViT:
    model_args = dict(
        embed_dims=(96, 192, 384, 768), num_heads=(3, 6, 12, 24), depths=(2, 2, 14, 6), c_ratios=(2, 1.25, 1.25, 1)
    )
    return _create_scalable_vit("scalable_vit_base", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def scalable_vit_large(pretrained: bool = False, **kwargs) -> ScalableViT:
    model_args = dict(
        embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32), depths=(2, 6, 12, 4), c_ratios=(0.25, 0.5, 1, 1)
    )
    return _create_scalable_vit("scalable_vit_large", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def test_scalable_vit(pretrained: bool = False, **kwargs) -> ScalableViT:
    model_args = dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 2, 4), depths=(2,) * 4, head_hidden_size=128)
    return _create_scalable_vit("test_scalable_vit", pretrained, **dict(model_args, **kwargs))
