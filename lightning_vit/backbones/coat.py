"""CoaT and CoaT-Lite: Co-Scale Conv-Attentional Image Transformers.

Paper: Xu, Xu, Chang, Tu, "Co-Scale Conv-Attentional Image Transformers", ICCV 2021 (arXiv 2104.06399).

Parameter names follow the official code (and timm, which shares them), so official and timm checkpoints load
key for key. Unlike both, this implementation accepts any input size: the patch embeddings floor, and the
parallel blocks resample each scale to the exact size of the target scale, which also makes the dense outputs at
odd sizes (e.g. 250x330 -> 62x82, 31x41, 15x20, 7x10) equal to the official detection backbone's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from lightning_vit.backbones._layers import DepthwiseConv2d, Linear, Mlp, init_linear_and_norm
from lightning_vit.backbones._registry import build_model, register_backbone

__all__ = ["CoaT", "checkpoint_filter_fn"]

Size = tuple[int, int]


def _tokens_to_map(x: torch.Tensor, size: Size) -> torch.Tensor:
    """(B, 1 + H*W, C) tokens with a leading class token -> (B, C, H, W) image map without it (contiguous)."""
    return x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *size)


def _map_view(x: torch.Tensor, size: Size) -> torch.Tensor:
    """:func:`_tokens_to_map` as a channels-last view of the tokens (no copy), the CPU convs' fast layout."""
    return x[:, 1:].view(x.shape[0], *size, x.shape[2]).permute(0, 3, 1, 2)


def _map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) tokens; a view when ``x`` is channels-last."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: Conv2d(kernel = stride = patch) -> tokens -> LayerNorm (eps 1e-5)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Size]:
        x = self.proj(x)  # (B, C, H', W'), floored
        size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), size  # (B, H'*W', C)


class ConvPosEnc(nn.Module):
    """Convolutional position encoding: 3x3 depthwise conv plus residual on the image tokens."""

    def __init__(self, dim: int, k: int = 3) -> None:
        super().__init__()
        self.proj = DepthwiseConv2d(dim, k, 1, k // 2)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        feat = _map_view(x, size)
        feat = self.proj(feat) + feat
        return torch.cat((x[:, :1], _map_to_tokens(feat)), dim=1)


class ConvRelPosEnc(nn.Module):
    """Convolutional relative position encoding ``q_img * dwconv(v_img)``; zero for the class token.

    Heads are split into groups by kernel size, ``window = {3: 2, 5: 3, 7: 3}`` meaning 2 heads use a 3x3 conv,
    3 heads a 5x5 and 3 heads a 7x7. The convs see v as a channels-last map, a view of the qkv output; in training
    under CPU autocast the 5x5 and 7x7 ones compute in fp32 (:class:`DepthwiseConv2d`), and so does their product
    with q, rounded once to the attention output's dtype.

    ``forward`` adds the encoding into the attention output's image tokens in place (one ``addcmul`` pass) rather
    than returning it zero-padded for a separate sum: the padded product, its copy and the addition were three passes
    over a (B, h, N, Ch) map (CoaT Tiny's stage-1 attention, fp32 inference: 65 -> 61 ms with the softmax below).
    """

    def __init__(self, head_chs: int, num_heads: int, window: dict[int, int]) -> None:
        super().__init__()
        if sum(window.values()) != num_heads:
            raise ValueError(f"crpe_window {window} splits {sum(window.values())} heads, the model has {num_heads}")
        self.conv_list = nn.ModuleList(DepthwiseConv2d(h * head_chs, k, padding=k // 2) for k, h in window.items())
        self.channel_splits = [h * head_chs for h in window.values()]

    def forward(self, x: torch.Tensor, q: torch.Tensor, v: torch.Tensor, size: Size) -> torch.Tensor:
        """``x`` (B, h, N, Ch) plus the encoding of q and v (B, h, N, Ch), in place; returns ``x``."""
        b, h, n, ch = q.shape
        v_img = _map_view(v.transpose(1, 2).reshape(b, n, h * ch), size)  # (B, h*Ch, H, W), channels-last
        conv_v = torch.cat([conv(t) for conv, t in zip(self.conv_list, v_img.split(self.channel_splits, dim=1))], 1)
        conv_v = _map_to_tokens(conv_v).view(b, n - 1, h, ch).transpose(1, 2)  # (B, h, H*W, Ch)
        x[:, :, 1:].addcmul_(q[:, :, 1:], conv_v)  # an fp32 conv_v (above) keeps the product in fp32
        return x


class FactorAttnConvRelPosEnc(nn.Module):
    """Factorized attention ``scale * q (softmax_N(k)^T v)`` plus the convolutional relative position encoding."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, proj_drop: float, shared_crpe: ConvRelPosEnc) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.crpe = shared_crpe

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if k.requires_grad:
            # softmax over the tokens, normalised after the product (exact): the sums divide the (Ch x Ch) context,
            # not the (N x Ch) keys, and no softmax backward runs along the strided token axis (training step 1.4x
            # faster here). k is a strided view of the qkv output; a (B, h, N, Ch)-ordered copy lets the product
            # below read exp(k)^T as a view instead of saving its own transposed copy for backward (one (B, N, C)
            # tensor less per block)
            k = k.contiguous()
            with torch.no_grad():  # the max only keeps exp in range; no gradient
                k_max = k.amax(dim=2, keepdim=True)
            k = (k - k_max).exp()
            context = (k.transpose(-1, -2) @ v) / k.sum(dim=2).unsqueeze(-1)  # (B, h, Ch, Ch): linear in N
        else:  # without a gradient one softmax pass is the faster (CoaT Tiny, fp32: 3137 keys 14.2 -> 11.4 ms)
            context = k.softmax(dim=2).transpose(-1, -2) @ v
        x = self.crpe(q @ (context * self.scale), q, v, size)  # (B, h, N, Ch)
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class SerialBlock(nn.Module):
    """cpe -> ``x + dp(attn(norm1 x))`` -> ``x + dp(mlp(norm2 x))`` on one scale."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        proj_drop: float,
        drop_path: float,
        shared_cpe: ConvPosEnc,
        shared_crpe: ConvRelPosEnc,
    ) -> None:
        super().__init__()
        self.cpe = shared_cpe
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.factoratt_crpe = FactorAttnConvRelPosEnc(dim, num_heads, qkv_bias, proj_drop, shared_crpe)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        x = self.cpe(x, size)
        x = x + self.drop_path(self.factoratt_crpe(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _resize_tokens(x: torch.Tensor, size: Size, target: Size) -> torch.Tensor:
    """Bilinearly resample the image tokens of ``x`` from ``size`` to exactly ``target``; keep the class token."""
    img = F.interpolate(_tokens_to_map(x, size), size=target, mode="bilinear", align_corners=False)
    return torch.cat((x[:, :1], img.flatten(2).transpose(1, 2)), dim=1)


class ParallelBlock(nn.Module):
    """Co-scale parallel block over scales 2-4: per-scale attention, cross-scale fusion, shared MLP."""

    def __init__(
        self,
        dims: tuple[int, ...],
        num_heads: int,
        mlp_ratios: tuple[float, ...],
        qkv_bias: bool,
        proj_drop: float,
        drop_path: float,
        shared_crpes: tuple[ConvRelPosEnc, ...],
    ) -> None:
        super().__init__()
        if not dims[1] == dims[2] == dims[3] or not mlp_ratios[1] == mlp_ratios[2] == mlp_ratios[3]:
            raise ValueError(f"parallel blocks need equal dims and mlp ratios on scales 2-4, got {dims}, {mlp_ratios}")
        dim = dims[1]
        self.norm12 = nn.LayerNorm(dim, eps=1e-6)
        self.norm13 = nn.LayerNorm(dim, eps=1e-6)
        self.norm14 = nn.LayerNorm(dim, eps=1e-6)
        self.factoratt_crpe2 = FactorAttnConvRelPosEnc(dim, num_heads, qkv_bias, proj_drop, shared_crpes[1])
        self.factoratt_crpe3 = FactorAttnConvRelPosEnc(dim, num_heads, qkv_bias, proj_drop, shared_crpes[2])
        self.factoratt_crpe4 = FactorAttnConvRelPosEnc(dim, num_heads, qkv_bias, proj_drop, shared_crpes[3])
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm22 = nn.LayerNorm(dim, eps=1e-6)
        self.norm23 = nn.LayerNorm(dim, eps=1e-6)
        self.norm24 = nn.LayerNorm(dim, eps=1e-6)
        # One MLP shared by the three scales; the three names keep the official state_dict keys.
        self.mlp2 = self.mlp3 = self.mlp4 = Mlp(dim, int(dim * mlp_ratios[1]), drop=proj_drop)

    def forward(
        self, x2: torch.Tensor, x3: torch.Tensor, x4: torch.Tensor, sizes: tuple[Size, Size, Size]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s2, s3, s4 = sizes
        cur2 = self.factoratt_crpe2(self.norm12(x2), s2)
        cur3 = self.factoratt_crpe3(self.norm13(x3), s3)
        cur4 = self.factoratt_crpe4(self.norm14(x4), s4)
        # Cross-scale fusion: every scale receives the other two, resampled to its own size.
        fused2 = cur2 + _resize_tokens(cur3, s3, s2) + _resize_tokens(cur4, s4, s2)
        fused3 = cur3 + _resize_tokens(cur4, s4, s3) + _resize_tokens(cur2, s2, s3)
        fused4 = cur4 + _resize_tokens(cur3, s3, s4) + _resize_tokens(cur2, s2, s4)
        x2 = x2 + self.drop_path(fused2)
        x3 = x3 + self.drop_path(fused3)
        x4 = x4 + self.drop_path(fused4)
        x2 = x2 + self.drop_path(self.mlp2(self.norm22(x2)))
        x3 = x3 + self.drop_path(self.mlp3(self.norm23(x3)))
        x4 = x4 + self.drop_path(self.mlp4(self.norm24(x4)))
        return x2, x3, x4


class CoaT(nn.Module):
    """CoaT (``parallel_depth > 0``) and CoaT-Lite (serial blocks only).

    Args:
        patch_size: stride of the first patch embedding (4); later scales use 2.
        in_chans: input channels.
        num_classes: classifier outputs; 0 keeps pooled features.
        embed_dims: channels of the four scales.
        serial_depths: serial blocks per scale.
        parallel_depth: co-scale parallel blocks (0 for CoaT-Lite).
        num_heads: attention heads on every scale.
        mlp_ratios: MLP expansion per scale.
        qkv_bias: bias in the qkv projections.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after attention and MLP projections.
        drop_path_rate: stochastic depth, the same for every block (as the paper).
        crpe_window: kernel size -> number of heads for the conv relative position encoding.
        global_pool: ``token`` (class token, as the paper) or ``avg`` (mean of the image tokens).
        features_only: the dense form: no final norms and no classifier; ``forward`` returns the four NCHW maps.
    """

    def __init__(
        self,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: tuple[int, int, int, int] = (64, 128, 320, 512),
        serial_depths: tuple[int, int, int, int] = (3, 4, 6, 3),
        parallel_depth: int = 0,
        num_heads: int = 8,
        mlp_ratios: tuple[float, float, float, float] = (4, 4, 4, 4),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        crpe_window: dict[int, int] | None = None,
        global_pool: str = "token",
        features_only: bool = False,
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        crpe_window = crpe_window or {3: 2, 5: 3, 7: 3}
        self.embed_dims = tuple(embed_dims)
        self.num_classes = 0 if features_only else num_classes
        self.num_features = self.embed_dims[-1]
        self.global_pool = global_pool
        self.features_only = features_only
        self.grad_checkpointing = False
        self.feature_info = [
            dict(
                num_chs=d,
                reduction=patch_size * 2**i,
                module="parallel_blocks" if i > 0 and parallel_depth > 0 else f"serial_blocks{i + 1}",
            )
            for i, d in enumerate(self.embed_dims)
        ]

        in_dims = (in_chans, *self.embed_dims[:-1])
        block_kw = dict(num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=proj_drop_rate, drop_path=drop_path_rate)
        for i, dim in enumerate(self.embed_dims, start=1):
            self.add_module(f"patch_embed{i}", PatchEmbed(patch_size if i == 1 else 2, in_dims[i - 1], dim))
            self.register_parameter(f"cls_token{i}", nn.Parameter(torch.zeros(1, 1, dim)))
        for i, dim in enumerate(self.embed_dims, start=1):
            self.add_module(f"cpe{i}", ConvPosEnc(dim))
        for i, dim in enumerate(self.embed_dims, start=1):
            self.add_module(f"crpe{i}", ConvRelPosEnc(dim // num_heads, num_heads, crpe_window))
        for i, (dim, depth) in enumerate(zip(self.embed_dims, serial_depths), start=1):
            blocks = nn.ModuleList(
                SerialBlock(
                    dim,
                    mlp_ratio=mlp_ratios[i - 1],
                    shared_cpe=self.cpes[i - 1],
                    shared_crpe=self.crpes[i - 1],
                    **block_kw,
                )
                for _ in range(depth)
            )
            self.add_module(f"serial_blocks{i}", blocks)
        self.parallel_blocks = (
            nn.ModuleList(
                ParallelBlock(self.embed_dims, mlp_ratios=mlp_ratios, shared_crpes=self.crpes, **block_kw)
                for _ in range(parallel_depth)
            )
            if parallel_depth > 0
            else None
        )

        # Classification: final norms (scales 2-4 for CoaT, scale 4 for Lite), class-token mixing, classifier.
        cls_norms = not features_only and self.parallel_blocks is not None
        self.norm2 = nn.LayerNorm(self.embed_dims[1], eps=1e-6) if cls_norms else None
        self.norm3 = nn.LayerNorm(self.embed_dims[2], eps=1e-6) if cls_norms else None
        self.norm4 = None if features_only else nn.LayerNorm(self.embed_dims[3], eps=1e-6)
        self.aggregate = nn.Conv1d(3, 1, kernel_size=1) if cls_norms else None
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Identity()
        if not features_only:
            self.reset_classifier(num_classes)

        for i in range(1, 5):
            trunc_normal_(getattr(self, f"cls_token{i}"), std=0.02)
        self.apply(init_linear_and_norm)

    @property
    def cpes(self) -> tuple[ConvPosEnc, ...]:
        return tuple(getattr(self, f"cpe{i}") for i in range(1, 5))

    @property
    def crpes(self) -> tuple[ConvRelPosEnc, ...]:
        return tuple(getattr(self, f"crpe{i}") for i in range(1, 5))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"cls_token{i}" for i in range(1, 5)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups in block order (timm style): each stage's embedding, then its serial blocks; the parallel
        blocks; the final norms and aggregation last. Group keys sort by stage first, so layer-wise lr decay sees the
        blocks in the order the image flows through them."""
        matcher = {}
        for i in range(1, 5):
            embed, blocks = rf"^(?:cls_token|patch_embed|crpe|cpe){i}(?:\.|$)", rf"^serial_blocks{i}\."
            matcher[f"stage{i}"] = rf"{embed}|{blocks}" if coarse else [(embed, (0,)), (rf"{blocks}(\d+)", (1,))]
        final = (r"^(?:norm\d|aggregate)", (99999,))
        matcher["parallel_blocks"] = [(r"^parallel_blocks\." if coarse else r"^parallel_blocks\.(\d+)", None), final]
        return matcher

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if self.features_only:
            raise RuntimeError("a features_only CoaT has no classifier")
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _run(self, block: nn.Module, *args) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _forward_scales(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[Size]]:
        """Run every scale; returns the token sequences (class token first) and their grid sizes."""
        xs, sizes = [], []
        for i in range(1, 5):
            if i > 1:
                x = _tokens_to_map(x, sizes[-1])
            x, size = getattr(self, f"patch_embed{i}")(x)
            x = torch.cat((getattr(self, f"cls_token{i}").expand(x.shape[0], -1, -1), x), dim=1)
            for blk in getattr(self, f"serial_blocks{i}"):
                x = self._run(blk, x, size)
            xs.append(x)
            sizes.append(size)
        if self.parallel_blocks is not None:
            x1, x2, x3, x4 = xs
            s2, s3, s4 = sizes[1:]
            for blk in self.parallel_blocks:
                x2, x3, x4 = self.cpe2(x2, s2), self.cpe3(x3, s3), self.cpe4(x4, s4)
                x2, x3, x4 = self._run(blk, x2, x3, x4, (s2, s3, s4))
            xs = [x1, x2, x3, x4]
        return xs, sizes

    def _final(self, xs: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            raise RuntimeError("a features_only CoaT has no final features; use forward() for its four maps")
        if self.parallel_blocks is None:
            return self.norm4(xs[3])  # (B, 1 + N4, C)
        return [self.norm2(xs[1]), self.norm3(xs[2]), self.norm4(xs[3])]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Normed tokens of the last scale (Lite), or of scales 2-4 as a list (CoaT); class token first."""
        return self._final(self._forward_scales(x)[0])

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor | list[torch.Tensor], list[torch.Tensor]]:
        """The four scales (strides 4-32) as NCHW maps without the class token.

        Args:
            x: images (B, 3, H, W), any H, W >= 32.
            indices: scales to return: None for all, an int n for the last n, or a list of indices 0-3.
            norm: apply the classification norms (``norm4``; ``norm2..4`` for CoaT) to the scales that have one.
            output_fmt: only ``NCHW``.
            intermediates_only: return only the maps, not ``(forward_features(x), maps)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"CoaT intermediates are NCHW only, got output_fmt={output_fmt!r}")
        take_indices, _ = feature_take_indices(4, indices)
        xs, sizes = self._forward_scales(x)
        norms = [None, self.norm2, self.norm3, self.norm4]
        maps = [
            _tokens_to_map(norms[i](xs[i]) if norm and norms[i] is not None else xs[i], sizes[i]) for i in take_indices
        ]
        if intermediates_only:
            return maps
        return self._final(xs), maps

    def forward_head(self, x: torch.Tensor | list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        if isinstance(x, list):
            pooled = [t[:, 1:].mean(dim=1) if self.global_pool == "avg" else t[:, 0] for t in x]
            x = self.aggregate(torch.stack(pooled, dim=1)).squeeze(1)  # (B, 3, C) -> (B, C)
        else:
            x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, intermediates_only=True)
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: CoaT) -> dict[str, torch.Tensor]:
    """Convert an official or timm CoaT checkpoint to ``model``'s keys.

    The official classification checkpoints also hold ``norm1`` (and ``norm2``/``norm3`` for CoaT-Lite), which
    the official forward never uses; they are dropped, as are the classification-only entries (final norms,
    ``aggregate``, ``head``) when ``model`` is the dense (``features_only``) form. Shared modules appear under
    several keys (``cpe*``, ``crpe*``, parallel ``mlp2/3/4``); every alias is kept, so strict loading works.
    """
    state_dict = state_dict.get("model", state_dict)
    own = model.state_dict()
    classification_only = ("norm1.", "norm2.", "norm3.", "norm4.", "aggregate.", "head.")
    return {k: v for k, v in state_dict.items() if k in own or not k.startswith(classification_only)}


def _create_coat(variant: str, pretrained: bool = False, **kwargs) -> CoaT:
    return build_model(CoaT, variant, pretrained, **kwargs)


@register_backbone
def coat_tiny(pretrained: bool = False, **kwargs) -> CoaT:
    model_args = dict(embed_dims=(152, 152, 152, 152), serial_depths=(2, 2, 2, 2), parallel_depth=6)
    return _create_coat("coat_tiny", pretrained, **dict(model_args, **kwargs))


@register_backbone
def coat_mini(pretrained: bool = False, **kwargs) -> CoaT:
    model_args = dict(embed_dims=(152, 216, 216, 216), serial_depths=(2, 2, 2, 2), parallel_depth=6)
    return _create_coat("coat_mini", pretrained, **dict(model_args, **kwargs))


@register_backbone
def coat_small(pretrained: bool = False, **kwargs) -> CoaT:
    model_args = dict(embed_dims=(152, 320, 320, 320), serial_depths=(2, 2, 2, 2), parallel_depth=6)
    return _create_coat("coat_small", pretrained, **dict(model_args, **kwargs))


@register_backbone
def coat_lite_tiny(pretrained: bool = False, **kwargs) -> CoaT:
    model_args = dict(embed_dims=(64, 128, 256, 320), serial_depths=(2, 2, 2, 2), mlp_ratios=(8, 8, 4, 4))
    return _create_coat("coat_lite_tiny", pretrained, **dict(model_args, **kwargs))


@register_backbone
def coat_lite_mini(pretrained: bool = False, **kwargs) -> CoaT:
    model_args = dict(embed_dims=(64, 128, 320, 512), serial_depths=(2, 2, 2, 2), mlp_ratios=(8, 8, 4, 4))
    return _create_coat("coat_lite_mini", pretrained, **dict(model_args, **kwargs))


@register_backbone
def coat_lite_small(pretrained: bool = False, **kwargs) -> CoaT:
    model_args = dict(embed_dims=(64, 128, 320, 512), serial_depths=(3, 4, 6, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_coat("coat_lite_small", pretrained, **dict(model_args, **kwargs))


@register_backbone
def coat_lite_medium(pretrained: bool = False, **kwargs) -> CoaT:
    model_args = dict(embed_dims=(128, 256, 320, 512), serial_depths=(3, 6, 10, 8))
    return _create_coat("coat_lite_medium", pretrained, **dict(model_args, **kwargs))


@register_backbone
def test_coat_lite(pretrained: bool = False, **kwargs) -> CoaT:
    # two blocks on the last scale: with one, crpe4 only touches image tokens that the class-token head never reads
    model_args = dict(embed_dims=(16, 32, 48, 64), serial_depths=(1, 1, 1, 2), mlp_ratios=(2, 2, 2, 2))
    return _create_coat("test_coat_lite", pretrained, **dict(model_args, **kwargs))


@register_backbone
def test_coat(pretrained: bool = False, **kwargs) -> CoaT:
    model_args = dict(embed_dims=(16, 32, 32, 32), serial_depths=(1, 1, 1, 1), parallel_depth=1, mlp_ratios=(2,) * 4)
    return _create_coat("test_coat", pretrained, **dict(model_args, **kwargs))
