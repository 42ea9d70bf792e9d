"""What every task shares: the backbone, optimizer parameter groups, lr scaling, the per-step schedule and the
fine-tuning aids (layer-wise lr decay, a head lr, a frozen backbone for the first epochs)."""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType, rank_zero_info, rank_zero_warn
from torchmetrics import MeanMetric

from lightning_vit.datamodules.base import SkippedSamplesReport
from lightning_vit.errors import OptionError
from lightning_vit.tasks.optim import (
    SCHEDULES,
    backbone_layer_ids,
    build_scheduler,
    fused_kernel_available,
    param_groups,
)

__all__ = ["BaseTask"]


class _SharedFactory:
    """A stateless factory (the config's optimizer) that copies of the module share instead of copying.

    The CLI's optimizer is a jsonargparse partial that holds the CLI's instantiators, and through them the trainer;
    under DDP that reaches the launcher's process handles and their locks, which cannot be copied, so
    ``EMAWeightAveraging`` (which deep-copies the module at setup) failed with "cannot pickle '_thread.lock'".
    """

    def __init__(self, factory: OptimizerCallable) -> None:
        self.factory = factory

    def __call__(self, params: Iterable[nn.Parameter] | Iterable[dict]) -> torch.optim.Optimizer:
        return self.factory(params)

    def __deepcopy__(self, memo: dict) -> _SharedFactory:
        return self


class BaseTask(L.LightningModule, ABC):
    """A LightningModule around a registered backbone, with the papers' optimizer recipe and fine-tuning aids.

    The backbone's *body* is what its ``group_matcher()`` covers (stem, blocks, final norm); everything else, the
    backbone's own classifier included, is the *head* (necks, decoders, detector heads, classifiers).

    Args:
        optimizer: a callable taking parameter groups, e.g. ``torch.optim.AdamW`` with its ``lr`` and
            ``weight_decay`` in the config; the default is AdamW(lr=1e-3, weight_decay=0.05), fused where the
            parameters' device has the kernel (see :meth:`default_optimizer`).
        lr_batch_size: the batch size the configured ``lr`` (and ``head_lr``) refers to: every learning rate is
            scaled by ``global batch / lr_batch_size`` (global batch = per-process batch x processes x
            accumulation). ``None`` uses the learning rates as given.
        scheduler: ``cosine``, ``poly``, ``step`` or ``constant``, stepped every optimizer step.
        warmup_epochs: linear warmup length in epochs (fractions allowed).
        warmup_steps: linear warmup length in steps (used when ``warmup_epochs`` is 0).
        warmup_lr: learning rate at the start of the warmup.
        min_lr: final learning rate of ``cosine`` / ``poly``.
        poly_power: exponent of ``poly``.
        milestones: epochs at which ``step`` multiplies the lr by ``gamma``.
        gamma: decay factor of ``step``.
        layer_decay: layer-wise lr decay (BEiT; timm's ``--layer-decay``): with the body's layers numbered in block
            order by its ``group_matcher()`` (0 = stem, ..., L - 1 = last block and final norm), layer ``i`` trains
            at ``lr * layer_decay ** (L - i)`` and the head at ``lr``. Each group's whole schedule, ``warmup_lr``
            and ``min_lr`` included, is scaled alike. ``None``: every layer at ``lr``.
        head_lr: learning rate of the head, at ``lr_batch_size`` and on the schedule as the optimizer's ``lr``,
            which then applies to the body (decayed further by ``layer_decay``). ``None``: the optimizer's ``lr``.
        freeze_backbone_epochs: train only the head for this many epochs: the body is in eval mode (Dropout,
            DropPath, BatchNorm statistics) and is not updated, no weight decay, no optimizer state; afterwards it
            trains with the schedule where it has got to.
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
        layer_decay: float | None = None,
        head_lr: float | None = None,
        freeze_backbone_epochs: int = 0,
    ) -> None:
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise OptionError(f"model.init_args.layer_decay must be in (0, 1] or null, got {layer_decay}")
        if head_lr is not None and head_lr <= 0:
            raise OptionError(f"model.init_args.head_lr must be a positive learning rate or null, got {head_lr}")
        if scheduler not in SCHEDULES:
            close = difflib.get_close_matches(scheduler, SCHEDULES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptionError(f"model.init_args.scheduler must be one of {SCHEDULES}, got {scheduler!r}{hint}")
        if freeze_backbone_epochs < 0:
            raise OptionError(f"model.init_args.freeze_backbone_epochs must be >= 0, got {freeze_backbone_epochs}")
        super().__init__()
        self.save_hyperparameters()  # the subclass's arguments too: Lightning collects every __init__ frame
        self.optimizer_factory = _SharedFactory(optimizer) if optimizer is not None else self.default_optimizer
        self._frozen_params: list[nn.Parameter] = []
        self.eval_losses = nn.ModuleDict({"val_loss": MeanMetric(), "test_loss": MeanMetric()})

    def default_optimizer(self, params: Iterable[nn.Parameter] | Iterable[dict]) -> torch.optim.Optimizer:
        """AdamW(lr=1e-3, weight_decay=0.05), with the fused kernel (one pass over each parameter's update instead
        of about ten ops per parameter: Swin-T's step on 2 CPU threads 58 -> 21 ms) where every parameter's device
        has it (CPU, CUDA), except with gradient clipping under ``16-mixed``, whose loss scale a fused optimizer
        removes only inside its step, after clipping would have run (Lightning refuses the combination). The same
        update as the unfused AdamW up to rounding, and the optimizer state loads either way."""
        groups = list(params)
        fused = fused_kernel_available(groups)
        if getattr(self._trainer, "gradient_clip_val", None) and self._loss_scaler() is not None:
            fused = False
        return torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.05, fused=fused or None)

    def _unfused_to_clip(
        self, optimizer: torch.optim.Optimizer, groups: Callable[[], list[dict]]
    ) -> torch.optim.Optimizer:
        """The configured optimizer, rebuilt unfused when it is fused, ``16-mixed`` scales the loss and gradients are
        clipped: a fused step unscales the gradients only inside itself, after clipping, so Lightning refuses it (the
        GPU recipes name ``fused: true`` for bf16). The same update, from the unfused kernels."""
        if not (
            optimizer.defaults.get("fused")
            and getattr(self._trainer, "gradient_clip_val", None)
            and self._loss_scaler()
        ):
            return optimizer
        rank_zero_warn(
            f"{type(optimizer).__name__}(fused=True) from the config runs unfused: under 16-mixed, gradient clipping "
            "(trainer.gradient_clip_val) needs the unscaled gradients before the optimizer step"
        )
        accepted = inspect.signature(type(optimizer)).parameters
        options = {k: v for k, v in optimizer.defaults.items() if k in accepted}
        return type(optimizer)(groups(), **{**options, "fused": False})

    def _loss_scaler(self) -> torch.amp.GradScaler | None:
        """The mixed-precision plugin's GradScaler (``16-mixed``); None without one (``bf16-mixed``, full precision)."""
        plugin = getattr(self._trainer, "precision_plugin", None)
        return plugin.scaler if isinstance(plugin, MixedPrecision) else None

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, and also for fused optimizers under ``bf16-mixed``: Lightning's mixed-precision
        plugin refuses to clip for any optimizer that unscales gradients in its step, but bf16 has no loss scale,
        so the gradients are the true ones and Lightning's own clipping (the base precision plugin's) applies."""
        plugin = self.trainer.precision_plugin
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        if not (gradient_clip_val and fused and isinstance(plugin, MixedPrecision) and self._loss_scaler() is None):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        algorithm = GradClipAlgorithmType(gradient_clip_algorithm or GradClipAlgorithmType.NORM)
        Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)

    def log_eval_loss(self, name: str, loss: torch.Tensor, batch_size: int) -> None:
        """Log ``val_loss`` / ``test_loss`` as the mean over every sample of the epoch, exact across processes.

        Lightning's ``sync_dist`` mean divides an integer sample count by the number of processes, which truncates
        when the ranks hold unequal shares of the set (7 images on 2 processes average over 3 per rank); a
        torchmetrics MeanMetric sums the values and the weights over the processes instead.
        """
        metric = self.eval_losses[name]
        metric.update(loss.detach().float(), weight=batch_size)
        self.log(name, metric, batch_size=batch_size)

    def _set_classes(self, num_classes: int | None, class_names: list[str] | None) -> None:
        """``self.num_classes`` and ``self.class_names`` from either argument (the CLI fills ``class_names``)."""
        if num_classes is None and class_names is None:
            raise OptionError("model.init_args.num_classes or model.init_args.class_names must be given")
        if num_classes is not None and class_names is not None and num_classes != len(class_names):
            raise OptionError(f"model.init_args.num_classes={num_classes} but {len(class_names)} class_names given")
        self.num_classes = num_classes if num_classes is not None else len(class_names)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(self.num_classes)]

    @abstractmethod
    def configure_models(self) -> None:
        """Build ``self.backbone`` and the heads."""

    def _backbone_prefix(self) -> str:
        """The backbone's parameter-name prefix in the task, e.g. ``backbone.`` or ``detector.backbone.body.``."""
        return next(name for name, module in self.named_modules() if module is self.backbone) + "."

    def backbone_layers(self) -> dict[str, int]:
        """Layer id (block order, 0 = stem) of each body parameter, by its name in the task; the head is not listed."""
        prefix = self._backbone_prefix()
        return {prefix + name: i for name, i in backbone_layer_ids(self.backbone).items()}

    def no_weight_decay(self) -> set[str]:
        """Parameter names (or module prefixes) excluded from weight decay, besides 1-D parameters and biases."""
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        prefix = self._backbone_prefix()
        return {prefix + n for n in names}

    def _batch_lr_scale(self) -> float:
        if not self.hparams.lr_batch_size:
            return 1.0
        trainer = self.trainer
        batch = getattr(trainer.datamodule, "batch_size", None)
        if batch is None:
            raise OptionError("model.init_args.lr_batch_size needs a DataModule with a batch_size")
        global_batch = batch * trainer.world_size * trainer.accumulate_grad_batches
        return global_batch / self.hparams.lr_batch_size

    def _lr_layers(self, lr: float) -> tuple[dict[str, int], list[float]]:
        """Each body parameter's layer and each layer's lr scale, the head (parameters not listed) last."""
        hp = self.hparams
        if hp.layer_decay is None and hp.head_lr is None:
            return {}, [1.0]
        head = hp.head_lr / lr if hp.head_lr is not None else 1.0
        layers = self.backbone_layers()
        if hp.layer_decay is None:
            layers, scales = dict.fromkeys(layers, 0), [1.0]
        else:
            num_layers = max(layers.values()) + 1
            scales = [hp.layer_decay ** (num_layers - i) for i in range(num_layers)]
        rank_zero_info(
            f"lr scales: backbone x{scales[0]:.3g} (stem) .. x{scales[-1]:.3g} (last block) over {len(scales)} "
            f"layers, head x{head:.3g}"
        )
        return layers, [*scales, head]

    def configure_optimizers(self) -> dict:
        probe = self.optimizer_factory([nn.Parameter(torch.zeros(1))])
        weight_decay = probe.defaults.get("weight_decay", 0.0)
        lr = probe.defaults["lr"]
        layers, lr_scales = self._lr_layers(lr)
        groups = functools.partial(param_groups, self, weight_decay, self.no_weight_decay(), layers, lr_scales)
        optimizer = self._unfused_to_clip(self.optimizer_factory(groups()), groups)
        scale = self._batch_lr_scale()
        for group in optimizer.param_groups:  # before the scheduler, which takes these as the peak learning rates
            group["lr"] *= scale * group["lr_scale"]
        hp = self.hparams
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = self._steps_per_epoch() if hp.warmup_epochs or hp.milestones else 0
        # Estimating builds the training loader before a resumed run restores the loops, and the fit loop would then
        # keep that loader without applying its saved state; dropping it makes the fit loop build it again after the
        # restore, so a run resumed from a mid-epoch checkpoint continues with the next batch (Lightning 2.x).
        fit_loop = getattr(self.trainer, "fit_loop", None)
        if getattr(fit_loop, "_combined_loader", None) is not None:
            fit_loop._combined_loader = None
        warmup = math.ceil(hp.warmup_epochs * steps_per_epoch) if hp.warmup_epochs else hp.warmup_steps
        rank_zero_info(
            f"optimizer {type(optimizer).__name__}: peak lr {lr * scale:.3g} (x{scale:.3g} for the batch), "
            f"{len(optimizer.param_groups)} parameter groups, {hp.scheduler} schedule over {total} steps, "
            f"{warmup} warmup steps"
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

    def _steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch of the training loader, for ``warmup_epochs`` and ``milestones``: right also
        when ``max_steps`` ends the run (or sets its length without ``max_epochs``)."""
        trainer = self.trainer
        if not math.isfinite(trainer.num_training_batches):  # not measured yet: max_epochs -1 skips the estimate
            trainer.fit_loop.setup_data()
        if not math.isfinite(trainer.num_training_batches):
            raise OptionError(
                "model.init_args.warmup_epochs / milestones count epochs, but the training loader has no length "
                "(an iterable dataset): give model.init_args.warmup_steps and the milestones in steps instead"
            )
        return max(math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches), 1)

    def configure_callbacks(self) -> list[L.Callback]:
        """Report the samples a DataModule skipped as unreadable (``data.skip_bad_samples``) at each epoch's end; a
        callback rather than epoch-end hooks here, which the tasks override."""
        return [SkippedSamplesReport()]

    def on_train_epoch_start(self) -> None:
        """Freeze the body for the first ``freeze_backbone_epochs`` epochs (a resumed run included), then release it.

        Freezing keeps ``requires_grad`` and the optimizer's groups as they are: DDP registers its gradient hooks when
        it wraps the model, and a checkpoint from either side of the boundary loads into the same groups. Instead
        the body's gradients are dropped before each optimizer step (``on_before_optimizer_step``), so optimizers
        skip it altogether: no update, no weight decay, no moment estimates.
        """
        epochs = self.hparams.freeze_backbone_epochs
        if not epochs:
            return
        frozen = self.current_epoch < epochs
        if frozen and not self._frozen_params:
            rank_zero_info(f"epoch {self.current_epoch}: backbone frozen until epoch {epochs}, training the head")
        elif not frozen and self._frozen_params:
            rank_zero_info(f"epoch {self.current_epoch}: backbone unfrozen")
        layers = self.backbone_layers()
        self._frozen_params = [p for name, p in self.named_parameters() if name in layers] if frozen else []
        self.backbone.train(not frozen)
        if frozen:
            body = {id(p) for p in self._frozen_params}
            for child in self.backbone.children():  # the backbone's own classifier is head: it stays in train mode
                if any(id(p) not in body for p in child.parameters()):
                    child.train()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the frozen body's gradients (see ``on_train_epoch_start``)."""
        for p in self._frozen_params:
            p.grad = None
