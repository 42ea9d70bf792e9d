"""Guards for long runs: a non-finite loss or gradient never reaches the weights or a checkpoint."""

from __future__ import annotations

import logging
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["NonFiniteError", "NonFiniteGuard", "weights_are_finite"]

log = logging.getLogger(__name__)

LIKELY_CAUSES = (
    "likely causes: a learning rate too high for the batch (check the peak lr the run logged and lr_batch_size), "
    "fp16 overflow (use precision bf16-mixed), or a bad sample or label (a mask value outside num_classes, a "
    "degenerate box)"
)


class NonFiniteError(RuntimeError):
    """A training step produced a NaN or infinite gradient and the guard was told to stop."""


def weights_are_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter and floating-point buffer of ``module`` is finite."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return not tensors or bool(torch.stack(torch._foreach_norm(tensors)).isfinite().all())


class NonFiniteGuard(Callback):
    """Checks the gradients before every optimizer step; a NaN or Inf stops the run or skips the step.

    The check runs after gradients are reduced across processes, so every rank takes the same decision. With
    ``stop`` the weights stay those of the last good step and no checkpoint is written after it, so
    ``fit --ckpt_path last`` resumes from a good state once the cause is fixed. With ``skip`` the step's gradients
    are dropped (the optimizer leaves every parameter, its weight decay and its state untouched) and the run goes
    on; ``max_consecutive`` skipped steps in a row stop it anyway. Under fp16 mixed precision the GradScaler already
    skips such steps and lowers its scale, so the guard leaves them to it.

    Args:
        action: ``stop`` or ``skip``.
        max_consecutive: with ``skip``, how many non-finite steps in a row stop the run.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_consecutive: int = 10) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"non_finite.action must be 'stop' or 'skip', got {action!r}")
        self.action = action
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self._consecutive = 0

    @staticmethod
    def _uses_grad_scaler(trainer: L.Trainer) -> bool:
        return getattr(trainer.precision_plugin, "scaler", None) is not None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if self._uses_grad_scaler(trainer):
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params or bool(torch.stack(torch._foreach_norm([p.grad for p in params])).isfinite().all()):
            self._consecutive = 0
            return
        where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}"
        if self.action == "stop":
            raise NonFiniteError(
                f"non-finite gradient at {where}; the run stops with the weights of the last good step and its "
                f"checkpoints untouched. {LIKELY_CAUSES}. Resume with `fit --ckpt_path last` after fixing it, or set "
                "--non_finite.action skip to drop such steps"
            )
        self.skipped += 1
        self._consecutive += 1
        log.warning("non-finite gradient at %s: step skipped (%d skipped so far)", where, self.skipped)
        if self._consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self._consecutive} non-finite steps in a row (last at {where}), beyond "
                f"non_finite.max_consecutive={self.max_consecutive}. {LIKELY_CAUSES}"
            )
        for p in params:
            p.grad = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.action == "skip":
            pl_module.log("train_skipped_steps", float(self.skipped), rank_zero_only=True)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)
