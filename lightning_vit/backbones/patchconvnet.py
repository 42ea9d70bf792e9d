"""PatchConvNet, from "Augmenting Convolutional networks with attention-based aggregation".

Touvron et al., 2021 (https://arxiv.org/abs/2112.13692). A convolutional stem of overall stride 16 feeds a single-scale
column of residual convolutional blocks (LayerNorm, 1x1 conv, GELU, depthwise 3x3 conv, GELU, squeeze-excite, 1x1
conv, layer scale). A single attention block with one head and a learned class token then pools the patch tokens, so
the pooling weights are the model's attention map (:meth:`PatchConvNet.forward_attention`). The multi-class-token
variant learns one class token and one ``Linear(D, 1)`` per class, and so one attention map per class.

Parameter names are those of the official code (``patchconvnet_models.py`` of facebookresearch/deit), so its
checkpoints load key for key. Unlike the official code, the trunk keeps the token grid as (B, H, W, C) instead of
assuming a square, so any input size works; the outputs are the official ones wherever the official model runs.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from lightning_vit.backbones._layers import Linear, Mlp, init_linear_and_norm
from lightning_vit.backbones._registry import build_model, register_backbone

__all__ = ["PatchConvNet", "checkpoint_filter_fn"]

_logger = logging.getLogger(__name__)


class SqueezeExcite(nn.Module):
    """Channel gate ``x * sigmoid(expand(relu(reduce(mean_hw(x)))))`` (the parameter names of timm's SqueezeExcite)."""

    def __init__(self, dim: int, rd_ratio: float = 0.25) -> None:
        super().__init__()
        rd_dim = round(dim * rd_ratio)
        self.conv_reduce = nn.Conv2d(dim, rd_dim, kernel_size=1)
        self.conv_expand = nn.Conv2d(rd_dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(F.relu(self.conv_reduce(x.mean((2, 3), keepdim=True))))  # (B, C, 1, 1)
        return x * gate.sigmoid()


class ConvSE(nn.Module):
    """The convolutional token mixer of a trunk block: 1x1 conv, GELU, depthwise 3x3, GELU, squeeze-excite, 1x1 conv.

    The official code calls it ``attn`` with a ``qkv_pos`` sequence; the names are kept for its checkpoints.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv_pos = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim),
            nn.GELU(),
            SqueezeExcite(dim),
            nn.Conv2d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C). The convolutions see a channels-last NCHW view: no copies."""
        return self.qkv_pos(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Trunk block ``x + gamma_1 * drop_path(conv_se(norm1(x)))`` on a (B, H, W, C) token grid."""

    def __init__(self, dim: int, drop_path: float = 0.0, init_values: float = 1e-4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ConvSE(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.gamma_1 = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))


class LearnedAggregation(nn.Module):
    """Single-head attention in which the K class tokens are the only queries.

    Keys and values are the class token and the patch tokens in the single-token model, and the patch tokens only in
    the multi-class-token model (as in the official code). Scale ``dim ** -0.5``.
    """

    def __init__(self, dim: int, qkv_bias: bool = True, proj_drop: float = 0.0, attend_to_cls: bool = True) -> None:
        super().__init__()
        self.attend_to_cls = attend_to_cls
        self.scale = dim**-0.5
        self.q = Linear(dim, dim, bias=qkv_bias)
        self.k = Linear(dim, dim, bias=qkv_bias)
        self.v = Linear(dim, dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _keys_source(self, x: torch.Tensor, num_cls: int) -> torch.Tensor:
        return x if self.attend_to_cls else x[:, num_cls:]

    def forward(self, x: torch.Tensor, num_cls: int) -> torch.Tensor:
        """Pool (B, K + N, C) normed tokens, class tokens first, into (B, K, C)."""
        kv = self._keys_source(x, num_cls)
        x = F.scaled_dot_product_attention(self.q(x[:, :num_cls]), self.k(kv), self.v(kv), scale=self.scale)
        return self.proj_drop(self.proj(x))

    def attention_weights(self, x: torch.Tensor, num_cls: int) -> torch.Tensor:
        """The softmax weights of :meth:`forward`: (B, K, K + N) with class-token keys, else (B, K, N)."""
        q = self.q(x[:, :num_cls]) * self.scale
        return (q @ self.k(self._keys_source(x, num_cls)).transpose(1, 2)).softmax(dim=-1)


class AggregationBlock(nn.Module):
    """The class-token block: ``cls += gamma_1 * attn(norm1([cls, x]))``, ``cls += gamma_2 * mlp(norm2(cls))``."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 3.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        init_values: float = 1e-4,
        attend_to_cls: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = LearnedAggregation(dim, qkv_bias=qkv_bias, proj_drop=drop, attend_to_cls=attend_to_cls)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.gamma_1 = nn.Parameter(torch.full((dim,), init_values))
        self.gamma_2 = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, N, C) and class tokens (B, K, C) -> updated class tokens (B, K, C)."""
        cls = cls + self.gamma_1 * self.attn(self.norm1(torch.cat((cls, x), dim=1)), cls.shape[1])
        return cls + self.gamma_2 * self.mlp(self.norm2(cls))

    def attention_weights(self, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """The pooling weights :meth:`forward` uses: (B, K, K + N) or, without class-token keys, (B, K, N)."""
        return self.attn.attention_weights(self.norm1(torch.cat((cls, x), dim=1)), cls.shape[1])


class ConvStem(nn.Module):
    """Four 3x3 stride-2 convolutions (no bias), 3 -> D/8 -> D/4 -> D/2 -> D, GELU between: overall stride 16."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 384) -> None:
        super().__init__()
        chans = (in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim)
        layers: list[nn.Module] = []
        for i in range(4):
            if i:
                layers.append(nn.GELU())
            # Each conv sits in a one-element Sequential so the keys are the official `proj.{0,2,4,6}.0.weight`.
            layers.append(nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1, bias=False)))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, ceil(H/16), ceil(W/16), D), contiguous."""
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class PatchConvNet(nn.Module):
    """PatchConvNet: convolutional trunk at stride 16 and attention-based pooling with learned class token(s).

    ``forward_features`` returns the trunk's stride-16 map (B, D, H/16, W/16) and ``forward_head`` does the pooling
    (class-token block, final norm, classifier): the attention-based aggregation is this model's global pool.
    Maps are NCHW tensors in channels-last memory layout (the trunk runs channels-last); use ``reshape``, not ``view``.
    Spatial sizes are ceil(H/16) x ceil(W/16).
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
        """
        Args:
            in_chans: input image channels.
            num_classes: classes of the classifier; 0 gives the pooled features (single-token model only).
            embed_dim: width D of the trunk.
            depth: number of trunk blocks.
            mlp_ratio_token_only: MLP hidden ratio of the class-token block.
            qkv_bias: bias in the pooling attention's q, k, v.
            drop_rate: dropout in the class-token block (attention projection and MLP), as the official code.
            drop_path_rate: stochastic depth of every trunk block (constant, not a ramp).
            init_values: initial layer scale (1e-4 for S60, 1e-6 for the deeper and wider variants).
            multi_token: one class token and one ``Linear(D, 1)`` per class; their keys are the patch tokens only.
            features_only: dense form: only the stem and trunk (no class token, pooling block, norm or classifier);
                ``forward`` returns ``[stride-16 map]``.
        """
        super().__init__()
        if multi_token and not features_only and num_classes < 1:
            raise ValueError(
                f"multi_token PatchConvNet needs num_classes >= 1 (one class token each), got {num_classes}"
            )
        self.num_classes = 0 if features_only else num_classes
        self.num_features = self.embed_dim = embed_dim
        self.multi_token = multi_token
        self.features_only = features_only
        self.grad_checkpointing = False
        self.feature_info = [dict(num_chs=embed_dim, reduction=16, module="blocks")]

        self.patch_embed = ConvStem(in_chans, embed_dim)
        self.blocks = nn.Sequential(
            *[Block(embed_dim, drop_path=drop_path_rate, init_values=init_values) for _ in range(depth)]
        )
        if features_only:
            self.norm, self.head = nn.Identity(), nn.Identity()
        else:
            self.cls_token = nn.Parameter(torch.zeros(1, num_classes if multi_token else 1, embed_dim))
            self.blocks_token_only = nn.ModuleList(
                [
                    AggregationBlock(
                        embed_dim,
                        mlp_ratio=mlp_ratio_token_only,
                        qkv_bias=qkv_bias,
                        drop=drop_rate,
                        init_values=init_values,
                        attend_to_cls=not multi_token,
                    )
                ]
            )
            self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
            self.head = self._make_head(num_classes)
            trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_norm)

    def _make_head(self, num_classes: int) -> nn.Module:
        if self.multi_token:
            return nn.ModuleList([nn.Linear(self.embed_dim, 1) for _ in range(num_classes)])
        return nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The class token and every layer scale ``gamma_*``."""
        names = {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1].startswith("gamma_")}
        return names | ({"cls_token"} if hasattr(self, "cls_token") else set())

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay: stem, one group per trunk block, then the pooling head.

        Args:
            coarse: unused, as in timm's ViT: a single-scale column has no coarser grouping than its blocks.
        """
        return dict(
            stem=r"^cls_token|^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^blocks_token_only|^norm", (99999,))]
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier. For the multi-token model this also re-initialises the class tokens (one each).

        Args:
            num_classes: the new number of classes (0: pooled features, single-token model only).
            global_pool: accepted for timm compatibility and ignored: the pooling is the attention block.
        """
        if self.features_only:
            raise ValueError("a features_only PatchConvNet has no classifier to reset")
        if self.multi_token:
            if num_classes < 1:
                raise ValueError(f"multi_token PatchConvNet needs num_classes >= 1, got {num_classes}")
            self.cls_token = nn.Parameter(
                trunc_normal_(self.cls_token.new_zeros(1, num_classes, self.embed_dim), std=0.02)
            )
        self.num_classes = num_classes
        self.head = self._make_head(num_classes).to(device=self.cls_token.device, dtype=self.cls_token.dtype)
        self.head.apply(init_linear_and_norm)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> token grid (B, h, w, D)."""
        x = self.patch_embed(x)
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return self.blocks(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The stride-16 trunk map, the only entry of ``feature_info``.

        Args:
            x: images (B, in_chans, H, W).
            indices: None, an int n (the last n) or indices into ``feature_info``; only index 0 exists.
            norm: apply the final norm (the one the pooling head applies to all tokens) to the map; a no-op with
                ``features_only``, which has no final norm.
            output_fmt: only "NCHW" (in channels-last memory layout).
            intermediates_only: return only the list of maps.

        Returns:
            ``[map]``, or ``(forward_features(x), [map])``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"PatchConvNet intermediates are NCHW only, got output_fmt={output_fmt!r}")
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        x = self._trunk(x)
        out = (self.norm(x) if norm else x).permute(0, 3, 1, 2)
        intermediates = [out for _ in take_indices]
        if intermediates_only:
            return intermediates
        return x.permute(0, 3, 1, 2), intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, in_chans, H, W) -> trunk map (B, D, ceil(H/16), ceil(W/16)) before pooling."""
        return self._trunk(x).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Attention-based pooling, final norm and classifier.

        Args:
            x: trunk map (B, D, h, w) from :meth:`forward_features`.
            pre_logits: return the normed class token(s) instead of logits.

        Returns:
            logits (B, num_classes); with ``pre_logits`` (B, D), or (B, num_classes, D) for the multi-token model.
        """
        x = x.permute(0, 2, 3, 1).flatten(1, 2)  # (B, N, D)
        cls = self.blocks_token_only[0](x, self.cls_token.expand(x.shape[0], -1, -1))  # (B, K, D)
        cls = self.norm(cls)
        if not self.multi_token:
            cls = cls[:, 0]  # (B, D)
            return cls if pre_logits else self.head(cls)
        if pre_logits:
            return cls
        weight = torch.cat([h.weight for h in self.head])  # (K, D)
        bias = torch.cat([h.bias for h in self.head])  # (K,)
        return (cls * weight).sum(-1) + bias

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (B, num_classes), pooled features if num_classes == 0, or ``[stride-16 map]`` if features_only."""
        x = self.forward_features(x)
        return [x] if self.features_only else self.forward_head(x)

    def forward_attention(
        self, x: torch.Tensor, return_cls_weight: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The pooling block's attention over the patches: the model's attention map.

        The single head's softmax runs over the class token and the patches in the single-token model, so there the
        map sums to ``1 - w_cls`` (the weight the class token gives itself); in the multi-token model the keys are
        the patches only and each class's map sums to 1.

        Args:
            x: images (B, in_chans, H, W).
            return_cls_weight: also return the class tokens' weight on themselves ((B,) or, multi-token, zeros
                (B, K)), so that ``maps.sum((-2, -1)) + cls_weight == 1``.

        Returns:
            maps (B, ceil(H/16), ceil(W/16)), or (B, num_classes, h, w) for the multi-token model; non-negative.
        """
        if self.features_only:
            raise ValueError("a features_only PatchConvNet has no pooling block, hence no attention map")
        x = self._trunk(x)
        b, h, w, _ = x.shape
        cls = self.cls_token.expand(b, -1, -1)
        attn = self.blocks_token_only[0].attention_weights(x.flatten(1, 2), cls)  # (B, K, [K +] h*w)
        maps = attn[..., -h * w :].reshape(b, -1, h, w)  # (B, K, h, w)
        if self.multi_token:
            cls_weight = attn.new_zeros(b, cls.shape[1])
        else:
            maps, cls_weight = maps[:, 0], attn[:, 0, 0]
        return (maps, cls_weight) if return_cls_weight else maps


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: PatchConvNet) -> dict[str, torch.Tensor]:
    """Turn an official (facebookresearch/deit) checkpoint into this model's state_dict.

    The key names are already the official ones. This unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` and strips
    a DDP ``module.`` prefix. For a ``features_only`` model it drops the pooling part (``cls_token``,
    ``blocks_token_only``, ``norm``, ``head``). When the checkpoint's classes do not fit the model's ``num_classes``
    it drops the class-dependent entries, so that a model for other classes can be fine-tuned from it: ``head.*``,
    and for the multi-token model also ``cls_token`` (tokens and heads go together, one pair per class).
    """
    state_dict = state_dict.get("model", state_dict.get("state_dict", state_dict))
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = model.state_dict()
    if model.features_only:
        drop: tuple[str, ...] = ("cls_token", "blocks_token_only.", "norm.", "head.")
    elif model.multi_token and "cls_token" in state_dict and state_dict["cls_token"].shape != own["cls_token"].shape:
        drop = ("cls_token", "head.")
    elif any(k.startswith("head.") and (k not in own or own[k].shape != v.shape) for k, v in state_dict.items()):
        drop = ("head.",)
    else:
        drop = ()
    if drop and not model.features_only:
        _logger.info("PatchConvNet checkpoint: %s do not fit num_classes=%d, dropped", drop, model.num_classes)
    return {k: v for k, v in state_dict.items() if not k.startswith(drop)}


def _create_patchconvnet(variant: str, pretrained: bool = False, **kwargs) -> PatchConvNet:
    return build_model(PatchConvNet, variant, pretrained, **kwargs)


@register_backbone(timm_register=True)
def patchconvnet_s60(pretrained: bool = False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=384, depth=60, init_values=1e-4)
    return _create_patchconvnet("patchconvnet_s60", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def patchconvnet_s120(pretrained: bool = False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=384, depth=120, init_values=1e-6)
    return _create_patchconvnet("patchconvnet_s120", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def patchconvnet_b60(pretrained: bool = False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=768, depth=60, init_values=1e-6)
    return _create_patchconvnet("patchconvnet_b60", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def patchconvnet_b120(pretrained: bool = False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=768, depth=120, init_values=1e-6)
    return _create_patchconvnet("patchconvnet_b120", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def patchconvnet_l60(pretrained: bool = False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=1024, depth=60, init_values=1e-6)
    return _create_patchconvnet("patchconvnet_l60", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def patchconvnet_l120(pretrained: bool = False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=1024, depth=120, init_values=1e-6)
    return _create_patchconvnet("patchconvnet_l120", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def patchconvnet_s60_multi(pretrained: bool = False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=384, depth=60, init_values=1e-4, multi_token=True)
    return _create_patchconvnet("patchconvnet_s60_multi", pretrained, **dict(model_args, **kwargs))


@register_backbone(timm_register=True)
def test_patchconvnet(pretrained: bool = False, **kwargs) -> PatchConvNet:
    model_args = dict(embed_dim=64, depth=2)
    return _create_patchconvnet("test_patchconvnet", pretrained, **dict(model_args, **kwargs))
