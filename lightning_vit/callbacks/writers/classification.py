"""Classification predictions: one CSV row per image with the top-k class names and probabilities."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L

__all__ = ["ClassificationWriter"]


class ClassificationWriter:
    """Write ``<output>/predictions.csv`` (or ``output`` itself when it ends in ``.csv``).

    Columns: ``path``, then ``top{k}_class``, ``top{k}_prob`` for k = 1..top_k, most likely first. Under several
    processes each writes ``predictions.rank<N>.csv``.
    """

    def __init__(self, output: Path, trainer: L.Trainer, pl_module: L.LightningModule, top_k: int = 5, **_) -> None:
        path = output if output.suffix == ".csv" else output / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.class_names = pl_module.class_names
        self.k = min(top_k, len(self.class_names))
        self._file = path.open("w", newline="")
        self._csv = csv.writer(self._file)
        self._csv.writerow(["path"] + [f"top{i}_{c}" for i in range(1, self.k + 1) for c in ("class", "prob")])

    def write(self, prediction: dict, batch: dict) -> None:
        probs, indices = prediction["probs"].topk(self.k, dim=-1)
        for path, p, idx in zip(prediction["path"], probs.tolist(), indices.tolist()):
            row = [path]
            for prob, i in zip(p, idx):
                row += [self.class_names[i], f"{prob:.6f}"]
            self._csv.writerow(row)

    def close(self) -> Path:
        self._file.close()
        return self.path
