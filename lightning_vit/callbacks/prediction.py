"""The ``predict`` output: one callback that hands each batch to the writer of the task's prediction format."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from lightning_vit.callbacks.writers import get_writer

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Write the predictions of ``predict`` under ``output`` (``--prediction_writer.*`` on the command line).

    - classification: ``<output>/predictions.csv`` (or ``output`` itself if it ends in ``.csv``): ``path``, then
      ``top{k}_class`` / ``top{k}_prob`` for k = 1..top_k; ``attention/<stem>.png`` and ``visuals/<stem>.png`` on
      request.

    Args:
        output: folder (or, for classification, a ``.csv`` path) to write to.
        top_k: classes per image in the classification CSV.
        save_visuals: also write overlay images (where the task has them) under ``<output>/visuals``.
        save_attention: classification with an attention-pooling backbone (PatchConvNet): write each image's
            attention map as a heat-map overlay ``<output>/attention/<image stem>.png``.
    """

    def __init__(
        self, output: str = "predictions", top_k: int = 5, save_visuals: bool = False, save_attention: bool = False
    ) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.save_attention = save_attention
        self.options = {"top_k": top_k, "save_visuals": save_visuals}
        self._writer = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_attention:
            pl_module.predict_attention = True
        writer = get_writer(getattr(pl_module, "prediction_format", None))
        self._writer = writer(self.output, trainer, pl_module, **self.options)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self._writer.write(prediction, batch)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank_zero_info(f"predictions written to {self._writer.close()}")
        self._writer = None
