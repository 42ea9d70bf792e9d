"""Checkpoints written atomically: a run killed while saving keeps its previous checkpoint intact."""

from __future__ import annotations

import logging
import os
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_vit.callbacks.guards import weights_are_finite

__all__ = ["AtomicModelCheckpoint"]

log = logging.getLogger(__name__)


class AtomicModelCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` that writes ``<file>.tmp`` then renames it into place.

    With ``monitor`` unset, ``save_top_k=1`` and ``filename="last"`` it keeps ``last.ckpt`` current at every save
    (each epoch, or every ``every_n_train_steps``), which is what ``fit --ckpt_path last`` resumes from. (Lightning's
    own ``save_last`` only refreshes ``last.ckpt`` when a monitored checkpoint is saved in the same step.)
    Weights holding a NaN or Inf are never written: the previous checkpoint stays in place.
    """

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None, **kwargs) -> None:
        super().__init__(dirpath=dirpath, filename=filename, **kwargs)
        self._fixed_dirpath = None if dirpath is None else str(dirpath)

    @property
    def state_key(self) -> str:
        """Also keyed by file name and a fixed folder: a run may keep ``last`` in its own run directory and in a
        fixed place (the demo does) with otherwise equal settings."""
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
            filename=self.filename,
            dirpath=self._fixed_dirpath,
        )

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if not weights_are_finite(trainer.lightning_module):
            log.error("not writing %s: the model's weights are not finite; the previous checkpoint is kept", filepath)
            return
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
