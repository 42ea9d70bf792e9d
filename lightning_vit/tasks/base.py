"""What every task shares: the backbone, optimizer parameter groups, lr scaling and the per-step schedule."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from lightning_vit.tasks.optim import build_scheduler, param_groups

__all__ = ["BaseTask"]


class BaseTask(L.LightningModule, ABC):
    """A LightningModule around a registered backbone, with the papers' optimizer recipe.

    Args:
        optimizer: a callable taking parameter groups, e.g. ``torch.optim.AdamW`` with its ``lr`` and
            ``weight_decay`` in the config; the default is AdamW(lr=1e-3, weight_decay=0.05).
        lr_batch_size: the batch size the configured ``lr`` refers to: the lr is scaled by
            ``global batch / lr_batch_size`` (global batch = per-process batch x processes x accumulation).
            ``None`` uses the lr as given.
        scheduler: ``cosine``, ``poly``, ``step`` or ``constant``, stepped every optimizer step.
        warmup_epochs: linear warmup length in epochs (fractions allowed).
        warmup_steps: linear warmup length in steps (used when ``warmup_epochs`` is 0).
        warmup_lr: learning rate at the start of the warmup.
        min_lr: final learning rate of ``cosine`` / ``poly``.
        poly_power: exponent of ``poly``.
        milestones: epochs at which ``step`` multiplies the lr by ``gamma``.
        gamma: decay factor of ``step``.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable | None = None,
        lr_batch_size: int | None = None,
        scheduler: str = "cosine",
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
        warmup_lr: float = 1e-6,
        min_lr: float = 1e-5,
        poly_power: float = 1.0,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # the subclass's arguments too: Lightning collects every __init__ frame
        self.optimizer_factory = optimizer or (lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05))

    def _set_classes(self, num_classes: int | None, class_names: list[str] | None) -> None:
        """``self.num_classes`` and ``self.class_names`` from either argument (the CLI fills ``class_names``)."""
        if num_classes is None and class_names is None:
            raise ValueError("model.init_args.num_classes or model.init_args.class_names must be given")
        if num_classes is not None and class_names is not None and num_classes != len(class_names):
            raise ValueError(f"model.init_args.num_classes={num_classes} but {len(class_names)} class_names given")
        self.num_classes = num_classes if num_classes is not None else len(class_names)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]

    @abstractmethod
    def configure_models(self) -> None:
        """Build ``self.backbone`` and the heads."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names (or module prefixes) excluded from weight decay, besides 1-D parameters and biases."""
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in names}

    def _lr_scale(self) -> float:
        if not self.hparams.lr_batch_size:
            return 1.0
        trainer = self.trainer
        batch = getattr(trainer.datamodule, "batch_size", None)
        if batch is None:
            raise ValueError("model.init_args.lr_batch_size needs a DataModule with a batch_size")
        global_batch = batch * trainer.world_size * trainer.accumulate_grad_batches
        return global_batch / self.hparams.lr_batch_size

    def configure_optimizers(self) -> dict:
        probe = self.optimizer_factory([nn.Parameter(torch.zeros(1))])
        weight_decay = probe.defaults.get("weight_decay", 0.0)
        optimizer = self.optimizer_factory(param_groups(self, weight_decay, self.no_weight_decay()))
        scale = self._lr_scale()
        for group in optimizer.param_groups:
            group["lr"] *= scale
        hp = self.hparams
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = (
            total / self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 0
        )
        warmup = math.ceil(hp.warmup_epochs * steps_per_epoch) if hp.warmup_epochs else hp.warmup_steps
        rank_zero_info(
            f"optimizer {type(optimizer).__name__}: peak lr {optimizer.param_groups[0]['lr']:.3g} "
            f"(x{scale:.3g} for the batch), {hp.scheduler} schedule over {total} steps, {warmup} warmup steps"
        )
        scheduler = build_scheduler(
            optimizer,
            hp.scheduler,
            total_steps=total,
            warmup_steps=warmup,
            warmup_lr=hp.warmup_lr,
            min_lr=hp.min_lr,
            power=hp.poly_power,
            milestones=[round(m * steps_per_epoch) for m in hp.milestones or ()],
            gamma=hp.gamma,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
