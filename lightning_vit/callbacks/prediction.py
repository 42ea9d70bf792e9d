"""Prediction writers: what ``predict`` leaves on disk for each task."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["PredictionWriter"]


class PredictionWriter(BasePredictionWriter):
    """Write the predictions of ``predict`` under ``output``.

    Classification: ``<output>/predictions.csv`` (or ``output`` itself when it ends in ``.csv``), one row per image:
    ``path``, then ``top{k}_class`` and ``top{k}_prob`` for k = 1..top_k, most likely first. Under several
    processes each writes ``predictions.rank<N>.csv``.

    Args:
        output: a folder, or for classification a ``.csv`` file path.
        top_k: classes per image in the classification CSV.
    """

    def __init__(self, output: str = "predictions", top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.top_k = top_k
        self._file = None
        self._writer = None

    def _csv_path(self, trainer: L.Trainer) -> Path:
        path = self.output if self.output.suffix == ".csv" else self.output / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._csv_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        k = min(self.top_k, pl_module.num_classes)
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["path"] + [f"top{i}_{c}" for i in range(1, k + 1) for c in ("class", "prob")])

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        k = min(self.top_k, pl_module.num_classes)
        probs, indices = prediction["probs"].topk(k, dim=-1)
        for path, p, idx in zip(prediction["path"], probs.tolist(), indices.tolist()):
            row = [path]
            for prob, i in zip(p, idx):
                row += [pl_module.class_names[i], f"{prob:.6f}"]
            self._writer.writerow(row)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._file.close()
        rank_zero_info(f"predictions written to {self._csv_path(trainer)}")
