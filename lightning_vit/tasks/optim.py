"""Parameter groups (weight decay exclusions, layer-wise lr scales) and per-step learning-rate schedules."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from timm.models import group_parameters
from torch.optim.lr_scheduler import LambdaLR

from lightning_vit.errors import OptionError

__all__ = ["SCHEDULES", "backbone_layer_ids", "param_groups", "build_scheduler", "fused_kernel_available"]

SCHEDULES = ("cosine", "poly", "step", "constant")


def _excluded(name: str, no_decay: Iterable[str]) -> bool:
    return any(name == n or name.startswith(n + ".") for n in no_decay)


def fused_kernel_available(params: Iterable[nn.Parameter] | Iterable[dict]) -> bool:
    """Whether torch's fused AdamW kernel serves ``params`` (parameters or parameter groups): floating-point
    parameters, all on CPU or CUDA."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)


def backbone_layer_ids(backbone: nn.Module) -> dict[str, int]:
    """Layer id of each backbone parameter in block order, from the backbone's timm-style ``group_matcher()``.

    Layer 0 is the stem, then one layer per block (or stage embedding) in forward order, the final norm sharing the
    last block's layer (timm's ``group_parameters``). Parameters that no pattern matches (the classifier) are not
    listed: they belong with the task's heads, one layer above the last block.
    """
    matcher = backbone.group_matcher(coarse=False) if hasattr(backbone, "group_matcher") else None
    if not isinstance(matcher, dict):
        raise TypeError(
            f"{type(backbone).__name__}.group_matcher() must return a dict of patterns (timm style) for "
            "model.init_args.layer_decay, head_lr and freeze_backbone_epochs"
        )
    patterns = []
    for spec in matcher.values():
        if spec is not None:
            patterns += [spec] if isinstance(spec, str) else [regex for regex, _ in spec]
    # the unmatched parameters form timm's last group, so leaving them out keeps the ids contiguous
    ids = group_parameters(backbone, matcher, reverse=True)
    return {n: i for n, i in ids.items() if any(re.match(regex, n) for regex in patterns)}


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay: Iterable[str] = (),
    layers: Mapping[str, int] | None = None,
    lr_scales: Sequence[float] = (1.0,),
) -> list[dict]:
    """Per layer, decayed weights and, without decay, 1-D parameters, biases and ``no_decay`` names (or prefixes).

    A parameter shared by several modules is listed once; parameters with ``requires_grad=False`` are left out.

    Args:
        model: the module whose parameters are grouped.
        weight_decay: weight decay of the decayed groups.
        no_decay: parameter names or module prefixes without weight decay.
        layers: layer of each parameter name (an index into ``lr_scales``); parameters not listed are in the last
            layer.
        lr_scales: lr multiplier of each layer, stored as each group's ``lr_scale``.

    Returns:
        Non-empty groups, layer by layer, the decayed group of a layer first.
    """
    no_decay = tuple(no_decay)
    layers = layers or {}
    groups = [
        [{"params": [], "weight_decay": wd, "lr_scale": scale} for wd in (weight_decay, 0.0)] for scale in lr_scales
    ]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or _excluded(name, no_decay)
        groups[layers.get(name, len(lr_scales) - 1)][int(skip)]["params"].append(p)
    return [g for layer in groups for g in layer if g["params"]]


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_lr: float = 1e-6,
    min_lr: float = 0.0,
    power: float = 1.0,
    milestones: Iterable[int] = (),
    gamma: float = 0.1,
) -> LambdaLR:
    """A per-step schedule: linear warmup from ``warmup_lr``, then ``name``.

    A group with an ``lr_scale`` follows the schedule of the lr ``lr / lr_scale`` scaled by ``lr_scale``, its
    ``warmup_lr`` and ``min_lr`` included (timm's rule), so layer-wise decayed groups keep their ratios throughout.

    Args:
        optimizer: its groups' current ``lr`` are the peak learning rates.
        name: ``cosine`` (to ``min_lr`` at ``total_steps``), ``poly`` (``(1 - t) ** power`` down to ``min_lr``),
            ``step`` (times ``gamma`` at each step in ``milestones``) or ``constant``.
        total_steps: optimizer steps of the whole run.
        warmup_steps: steps of linear warmup.
        warmup_lr: learning rate at step 0 of the warmup.
        min_lr: final learning rate of ``cosine`` and ``poly``.
        power: exponent of ``poly``.
        milestones: steps at which ``step`` decays.
        gamma: decay factor of ``step``.
    """
    if name not in SCHEDULES:
        raise OptionError(f"model.init_args.scheduler must be one of {SCHEDULES}, got {name!r}")
    milestones = sorted(milestones)
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(base_lr: float):
        def f(step: int) -> float:
            if step < warmup_steps:
                return (warmup_lr + (base_lr - warmup_lr) * step / warmup_steps) / base_lr
            t = min(1.0, (step - warmup_steps) / decay_steps)
            if name == "cosine":
                return (min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))) / base_lr
            if name == "poly":
                return (min_lr + (base_lr - min_lr) * (1 - t) ** power) / base_lr
            if name == "step":
                return gamma ** sum(step >= m for m in milestones)
            return 1.0

        return f

    return LambdaLR(optimizer, [factor(g["lr"] / g.get("lr_scale", 1.0)) for g in optimizer.param_groups])
