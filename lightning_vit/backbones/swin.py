"""Swin Transformer: Hierarchical Vision Transformer using Shifted Windows (Liu et al., ICCV 2021).

Paper: https://arxiv.org/abs/2103.14030. Official code: microsoft/Swin-Transformer (classification) and the
mmdet/mmseg backbone of SwinTransformer/Swin-Transformer-Object-Detection (dense prediction).

One class, two forms:

- classification (default): the official classification model, with timm's parameter layout (patch merging at the
  START of stages 1-3, classifier ``head.fc``), so timm checkpoints load as they are.
- dense (``features_only=True``): the official detection/segmentation backbone, with the per-output LayerNorms
  ``norm0..norm3`` and no classifier; ``forward`` returns the four NCHW maps of strides 4, 8, 16 and 32.

Official, mmdet and timm checkpoints load through :func:`checkpoint_filter_fn`.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath, to_2tuple, trunc_normal_
from timm.models._features import feature_take_indices
from torch.utils.checkpoint import checkpoint

from lightning_vit.backbones._layers import (
    Linear,
    Mlp,
    attention,
    init_linear_and_norm,
    pad_to_multiple,
    window_partition,
    window_reverse,
)
from lightning_vit.backbones._registry import build_model, register_backbone

__all__ = ["SwinTransformer", "checkpoint_filter_fn"]

_logger = logging.getLogger(__name__)

# Keys that one form of the model has and the other lacks: the classifier's final norm and head, the dense
# backbone's per-output norms. See checkpoint_filter_fn.
_FORM_SPECIFIC_KEY = re.compile(r"^(norm\d*|head)\.")


@functools.lru_cache(maxsize=32)
def relative_position_index(window_size: int, device: torch.device) -> torch.Tensor:
    """Index into the (2ws-1)^2 relative position bias table for every pair of tokens of a ws x ws window.

    Cached per window size and device (not a buffer: nothing to save, and nothing for a meta-device build or
    ``to_empty`` to leave uninitialised); callers must not modify the result.

    Returns:
        (ws*ws, ws*ws) long tensor, ``(dy + ws - 1) * (2ws - 1) + (dx + ws - 1)`` for query ``i`` and key ``j``.
    """
    with torch.inference_mode(False):  # a normal tensor, usable by autograd after an inference-mode call
        axis = torch.arange(window_size, device=device)
        coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij")).flatten(1)  # (2, N)
        rel = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # (2, N, N), each in [0, 2ws-2]
        return rel[0] * (2 * window_size - 1) + rel[1]


@functools.lru_cache(maxsize=32)
def shift_window_mask(
    height: int, width: int, window_size: int, shift_size: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Additive attention mask of shifted-window attention on a (padded) ``height`` x ``width`` map.

    After the cyclic shift by ``-shift_size`` the last window row and column hold tokens from up to three image
    regions per axis; tokens of different regions must not attend to each other (the official value -100).
    Cached per size, device and dtype; callers must not modify the result.

    Returns:
        (nW, ws*ws, ws*ws) tensor of 0 and -100, windows in :func:`window_partition` order.
    """
    with torch.inference_mode(False):

        def region(size: int) -> torch.Tensor:
            ids = torch.zeros(size, dtype=torch.long, device=device)
            ids[size - window_size :] = 1
            ids[size - shift_size :] = 2
            return ids

        label = region(height)[:, None] * 3 + region(width)[None, :]  # (Hp, Wp)
        windows = window_partition(label[None, :, :, None], window_size).squeeze(-1)  # (nW, ws*ws)
        different = windows[:, None, :] != windows[:, :, None]  # (nW, ws*ws, ws*ws)
        return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill_(different, -100.0)


def resize_relative_position_bias_table(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """Bicubic resize of a ((2w-1)^2, nH) bias table to ``window_size``, as the official fine-tuning loader does.

    (timm's ``checkpoint_filter_fn`` uses a BEiT-style geometric resampling instead; this is the official one.)
    """
    num_pos, num_heads = table.shape
    src = round(num_pos**0.5)
    dst = 2 * window_size - 1
    if src * src != num_pos:
        raise ValueError(f"relative position bias table of {num_pos} rows is not a square ((2*ws-1)^2) table")
    if src == dst:
        return table
    grid = table.float().t().reshape(1, num_heads, src, src)  # (1, nH, 2w-1, 2w-1)
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.reshape(num_heads, dst * dst).t().to(table.dtype)  # ((2ws-1)^2, nH)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding; the image is zero-padded right/bottom to a multiple of the patch size."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, ceil(H/p), ceil(W/p), C)."""
        p = self.patch_size
        pad_h, pad_w = (p - x.shape[-2] % p) % p, (p - x.shape[-1] % p) % p
        if pad_h or pad_w or torch.jit.is_tracing():  # a trace keeps the pad, so other sizes export too
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, H/p, W/p, C)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias (W-MSA / SW-MSA)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """The (nH, N, N) bias, gathered from the table on every call so that the table gets its gradient."""
        table, n = self.relative_position_bias_table, self.window_size**2
        index = relative_position_index(self.window_size, table.device).view(-1)
        return table.index_select(0, index).view(n, n, -1).permute(2, 0, 1)  # (nH, N, N)

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within each window.

        Args:
            x: windows (B*nW, N, C), N = ws*ws, in :func:`window_partition` order.
            shift_mask: (nW, N, N) additive mask of the shifted windows, or None.

        Returns:
            (B*nW, N, C).
        """
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B*nW, nH, N, d)
        # in the table's dtype (fp32 under autocast), so the scores and their softmax are too (see `attention`)
        bias = self.relative_position_bias().unsqueeze(0)  # (1, nH, N, N)
        if shift_mask is not None:  # (nW, nH, N, N): `attention` applies it window by window
            bias = shift_mask.to(bias.dtype).unsqueeze(1) + bias
        x = attention(q, k, v, self.scale, bias, self.attn_drop if self.training else 0.0)  # (B*nW, nH, N, d)
        x = x.transpose(1, 2).reshape(bw, n, c)  # (B*nW, N, C)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """``x + dp(W-MSA(norm1 x))``, ``x + dp(mlp(norm2 x))`` on a (B, H, W, C) map.

    The normalised map is zero-padded right/bottom to a multiple of the window, THEN cyclically shifted by
    ``-shift_size`` (when shifting), split into windows, attended, merged, shifted back and cropped. Padded tokens
    take part in attention like any other token (as in the official dense backbone).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, window_size, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def _window_attention(self, x: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        _, h, w, _ = x.shape
        ws, shift = self.window_size, self.shift_size
        x = pad_to_multiple(x, ws)  # (B, Hp, Wp, C)
        hp, wp = x.shape[1], x.shape[2]
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        x = self.attn(window_partition(x, ws), shift_mask if shift else None)  # (B*nW, ws*ws, C)
        x = window_reverse(x, ws, hp, wp)  # (B, Hp, Wp, C)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x[:, :h, :w]

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C); ``shift_mask`` is the stage's mask for the padded size (shifting blocks)."""
        b, h, w, c = x.shape
        x = x + self.drop_path1(self._window_attention(self.norm1(x), shift_mask))
        x = x.reshape(b, h * w, c)  # CPU bf16 Linear is ~1.5x faster on 3-d than on 4-d input (README Performance)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(b, h, w, c)


class PatchMerging(nn.Module):
    """2x2 patch merging: concat of the four phases -> LN(4C) -> Linear(4C -> out_dim, no bias).

    An odd H or W is zero-padded right/bottom first, so the output is (H+1)//2 x (W+1)//2.
    """

    def __init__(self, dim: int, out_dim: int, norm_layer: Callable[..., nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), out_dim)."""
        x = pad_to_multiple(x, 2)
        b, h, w, c = x.shape
        # channel order x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2], as the official concat
        x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2 * (w // 2), 4 * c)
        return self.reduction(self.norm(x)).view(b, h // 2, w // 2, -1)


class SwinTransformerStage(nn.Module):
    """Optional patch merging (timm layout: at the start of the stage), then ``depth`` blocks; odd blocks shift."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        downsample: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.grad_checkpointing = False
        self.downsample = PatchMerging(dim, out_dim, norm_layer) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                out_dim,
                num_heads,
                window_size,
                0 if i % 2 == 0 else shift_size,
                mlp_ratio,
                qkv_bias,
                proj_drop,
                attn_drop,
                drop_path[i] if drop_path else 0.0,
                norm_layer,
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C_in) -> (B, H', W', C_out), H' = ceil(H/2) with downsampling."""
        x = self.downsample(x)
        shift_mask = None
        if self.shift_size and len(self.blocks) > 1:
            ws = self.window_size
            # (n + ws - 1) // ws, not -(-n // ws): traced sizes export to ONNX with truncating division
            hp, wp = (x.shape[1] + ws - 1) // ws * ws, (x.shape[2] + ws - 1) // ws * ws
            # in the dtype of the residual stream, which is the parameters' (fp32 under autocast), as the bias's
            shift_mask = shift_window_mask(hp, wp, ws, self.shift_size, x.device, x.dtype)  # (nW, N, N)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, shift_mask, use_reentrant=False)
            else:
                x = block(x, shift_mask)
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer, classification model or (``features_only=True``) dense backbone.

    Classification form: as the official model at ``img_size``: a stage whose resolution at ``img_size`` is at most
    the window uses one window of that resolution and does not shift; other stages use ``window_size`` and shift
    odd blocks by ``window_size // 2``. These per-stage windows and shifts are fixed at construction. On any other
    input size (H, W >= 32) the model runs like the dense backbone with those windows: the image is zero-padded to
    a multiple of the patch size, each block pads to a multiple of its window before shifting (shift masks are
    built for the padded size) and crops back, and odd sizes are padded before merging. (timm with
    ``dynamic_img_size=True`` pads after the shift instead, so it differs on sizes that are not multiples of the
    window.)

    Dense form (``features_only=True``): the official mmdet/mmseg backbone: every stage uses ``window_size`` and
    shifts its odd blocks, whatever the input size (``img_size`` is ignored); output i is LayerNorm ``norm{i}`` of
    stage i's output as an NCHW map. No final norm and no classifier (``num_classes`` is 0).

    Feature maps have C, 2C, 4C, 8C channels at strides 4, 8, 16, 32 (with ``patch_size`` 4), spatial sizes
    ``ceil(H/4)`` then halved with rounding up.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        features_only: bool = False,
    ) -> None:
        """Build the model.

        Args:
            img_size: input size the classification form is built for (sets the per-stage windows, see above).
            patch_size: patch (stride) of the embedding.
            in_chans: image channels.
            num_classes: classifier outputs; 0 for none (``forward`` then returns pooled features).
            global_pool: pooling before the classifier (``"avg"``; ``""`` for none).
            embed_dim: channels C of stage 0; stage i has C * 2^i.
            depths: blocks per stage.
            num_heads: attention heads per stage.
            window_size: attention window ws.
            mlp_ratio: MLP hidden width / channels.
            qkv_bias: bias in the qkv projection.
            drop_rate: dropout before the classifier.
            proj_drop_rate: dropout after the attention projection and in the MLP.
            attn_drop_rate: dropout on attention weights.
            drop_path_rate: stochastic depth, ramped linearly from 0 over all blocks.
            norm_layer: normalisation layer (LayerNorm, eps 1e-5, as the official models).
            features_only: build the dense backbone instead of the classifier.
        """
        super().__init__()
        num_stages = len(depths)
        self.features_only = features_only
        self.num_classes = 0 if features_only else num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dim * 2 ** (num_stages - 1)
        self.feature_info = [
            dict(num_chs=embed_dim * 2**i, reduction=patch_size * 2**i, module=f"layers.{i}") for i in range(num_stages)
        ]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer)
        img_h, img_w = to_2tuple(img_size)
        resolution = (-(-img_h // patch_size), -(-img_w // patch_size))
        total_depth = sum(depths)
        dpr = [drop_path_rate * i / max(total_depth - 1, 1) for i in range(total_depth)]
        stages = []
        for i in range(num_stages):
            if i > 0:
                resolution = ((resolution[0] + 1) // 2, (resolution[1] + 1) // 2)
            if features_only or min(resolution) > window_size:
                stage_window, shift = window_size, window_size // 2
            else:  # the official classifier: one window over a small stage, no shift
                stage_window, shift = min(resolution), 0
            stages.append(
                SwinTransformerStage(
                    embed_dim * 2 ** max(i - 1, 0),
                    embed_dim * 2**i,
                    depths[i],
                    num_heads[i],
                    stage_window,
                    shift,
                    downsample=i > 0,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    norm_layer=norm_layer,
                )
            )
        self.layers = nn.Sequential(*stages)
        if features_only:
            self.norm = nn.Identity()
            self.head = ClassifierHead(self.num_features, 0, pool_type=global_pool, input_fmt="NHWC")
            for i in range(num_stages):
                self.add_module(f"norm{i}", norm_layer(embed_dim * 2**i))
        else:
            self.norm = norm_layer(self.num_features)
            self.head = ClassifierHead(
                self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt="NHWC"
            )
        self.apply(init_linear_and_norm)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The relative position bias tables, as the official recipe."""
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay (timm style)."""
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)"
            if coarse
            else [(r"^layers\.(\d+).downsample", (0,)), (r"^layers\.(\d+)\.\w+\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (when training) to save memory."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final Linear (or Identity without classes)."""
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0: none)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
        if global_pool is not None:
            self.global_pool = global_pool
        if num_classes > 0:
            init_linear_and_norm(self.head.fc)

    def _output_norm(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self.features_only:
            return getattr(self, f"norm{index}")(x)
        return self.norm(x) if index == len(self.layers) - 1 else x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (timm semantics).

        Args:
            x: images (B, C_in, H, W).
            indices: stages to return: None all, int n the last n, or a sequence of stage indices.
            norm: apply the output norms: the final norm to the last stage (classification form) or ``norm{i}`` to
                every stage (dense form: the official backbone outputs).
            stop_early: skip the stages after the last one requested.
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: return only the list of maps.

        Returns:
            The maps, or ``(forward_features(x), maps)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        stages = self.layers[: max_index + 1] if stop_early else self.layers
        x = self.patch_embed(x)
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                out = self._output_norm(i, x) if norm else x
                intermediates.append(out.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else out)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.layers):
            x = self.norm(x)
        return x, intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, H, W) -> final features (B, H/32, W/32, 8C), NHWC as timm (final norm applied)."""
        return self.norm(self.layers(self.patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mean pool and classify NHWC features: (B, num_classes), or (B, num_features) with ``pre_logits``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits (B, num_classes); the dense form returns the list of ``norm{i}``-ed NCHW stage maps."""
        if self.features_only:
            return self.forward_intermediates(x, norm=True, intermediates_only=True)
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: SwinTransformer) -> dict[str, torch.Tensor]:
    """Convert an official, mmdet/mmseg or timm Swin checkpoint to ``model``'s keys.

    Accepts a bare state_dict or one wrapped under ``"model"`` (official) or ``"state_dict"`` (mmdet/mmseg). A
    ``backbone.`` prefix (a whole detector or segmenter checkpoint) is stripped and every key without it (neck,
    heads) is ignored. Official layouts (patch merging at the END of stages 0-2, classifier ``head``) are renamed to
    timm's (``layers.{i+1}.downsample``, ``head.fc``).

    Ignored keys, and why:
        - ``*.relative_position_index`` and ``*.attn_mask``: buffers the official code saves; the model computes
          its own (indices for its window, masks for each padded input size).
        - ``norm.*`` and ``head.*`` when loading into the dense form: the classifier's final norm and classifier,
          which the dense backbone does not have (mmdet ignores them in the same way).
        - ``norm0..3.*`` when loading into the classification form: the dense backbone's per-output norms.
        - ``head.fc.*`` whose shape differs from the model's (another number of classes): the model's fresh
          classifier is kept, ready for fine-tuning.

    Keys the checkpoint lacks but the model's form needs (``norm0..3`` from a classification checkpoint, ``norm`` and
    ``head.fc`` from a dense one) keep the model's current values, so strict loading succeeds: the per-output norms
    start as identity-initialised LayerNorms, exactly as mmdet initialises them from an ImageNet checkpoint.

    Relative position bias tables of another window size (e.g. a window-7 checkpoint into a window-12 model) are
    resized bicubically (:func:`resize_relative_position_bias_table`).

    Anything else that does not match is passed through unchanged, so ``load_state_dict(strict=True)`` still
    reports it.
    """
    for wrapper in ("model", "state_dict"):
        state_dict = state_dict.get(wrapper, state_dict)
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    official = "layers.0.downsample.reduction.weight" in state_dict
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    ignored = []
    for k, v in state_dict.items():
        if k.endswith(("relative_position_index", "attn_mask")):
            continue
        if official:
            k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k)
            k = re.sub(r"^head\.(?!fc\.)", "head.fc.", k)
        if (_FORM_SPECIFIC_KEY.match(k) and k not in own) or (k.startswith("head.") and own[k].shape != v.shape):
            ignored.append(k)
            continue
        if k.endswith(".relative_position_bias_table") and k in own and v.shape != own[k].shape:
            attn = model.get_submodule(k.rsplit(".", 1)[0])
            v = resize_relative_position_bias_table(v, attn.window_size)
        out[k] = v
    kept = [k for k in own if _FORM_SPECIFIC_KEY.match(k) and k not in out]
    if ignored or kept:
        _logger.info("Swin checkpoint: ignored %s; kept the model's own %s", ignored, kept)
    out.update({k: own[k] for k in kept})
    return out


def _create_swin_transformer(variant: str, pretrained: bool = False, **kwargs) -> SwinTransformer:
    return build_model(SwinTransformer, variant, pretrained, **kwargs)


@register_backbone
def swin_tiny_patch4_window7_224(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """Swin-T at 224, window 7."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
    return _create_swin_transformer("swin_tiny_patch4_window7_224", pretrained, **dict(model_args, **kwargs))


@register_backbone
def swin_small_patch4_window7_224(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """Swin-S at 224, window 7."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
    return _create_swin_transformer("swin_small_patch4_window7_224", pretrained, **dict(model_args, **kwargs))


@register_backbone
def swin_base_patch4_window7_224(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """Swin-B at 224, window 7."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
    return _create_swin_transformer("swin_base_patch4_window7_224", pretrained, **dict(model_args, **kwargs))


@register_backbone
def swin_large_patch4_window7_224(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """Swin-L at 224, window 7."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
    return _create_swin_transformer("swin_large_patch4_window7_224", pretrained, **dict(model_args, **kwargs))


@register_backbone
def swin_base_patch4_window12_384(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """Swin-B at 384, window 12."""
    model_args = dict(
        img_size=384, patch_size=4, window_size=12, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)
    )
    return _create_swin_transformer("swin_base_patch4_window12_384", pretrained, **dict(model_args, **kwargs))


@register_backbone
def swin_large_patch4_window12_384(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """Swin-L at 384, window 12."""
    model_args = dict(
        img_size=384, patch_size=4, window_size=12, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)
    )
    return _create_swin_transformer("swin_large_patch4_window12_384", pretrained, **dict(model_args, **kwargs))


@register_backbone
def test_swin(pretrained: bool = False, **kwargs) -> SwinTransformer:
    """A tiny Swin for tests: C=16, two blocks per stage."""
    model_args = dict(patch_size=4, window_size=7, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8))
    return _create_swin_transformer("test_swin", pretrained, **dict(model_args, **kwargs))
