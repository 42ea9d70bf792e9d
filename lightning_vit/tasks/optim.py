"""Parameter groups (weight decay exclusions) and per-step learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["SCHEDULES", "param_groups", "build_scheduler"]

SCHEDULES = ("cosine", "poly", "step", "constant")


def _excluded(name: str, no_decay: Iterable[str]) -> bool:
    return any(name == n or name.startswith(n + ".") for n in no_decay)


def param_groups(model: nn.Module, weight_decay: float, no_decay: Iterable[str] = ()) -> list[dict]:
    """Two groups: decayed weights, and 1-D parameters, biases and ``no_decay`` names (or prefixes) without decay.

    A parameter shared by several modules is listed once.
    """
    no_decay = tuple(no_decay)
    decay, skip = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (skip if p.ndim <= 1 or name.endswith(".bias") or _excluded(name, no_decay) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": skip, "weight_decay": 0.0}]


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
        raise ValueError(f"model.init_args.scheduler must be one of {SCHEDULES}, got {name!r}")
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

    return LambdaLR(optimizer, [factor(g["lr"]) for g in optimizer.param_groups])
