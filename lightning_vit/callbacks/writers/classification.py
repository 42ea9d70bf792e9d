"""Classification predictions: one CSV row per image with the top-k class names and probabilities."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L

from lightning_vit.callbacks.writers._visuals import heatmap_overlay, put_label, unique_path, write_rgb
from lightning_vit.datamodules._io import read_image

__all__ = ["ClassificationWriter"]


class ClassificationWriter:
    """Write ``<output>/predictions.csv`` (or ``output`` itself when it ends in ``.csv``).

    Columns: ``path``, then ``top{k}_class``, ``top{k}_prob`` for k = 1..top_k, most likely first. Under several
    processes each writes ``predictions.rank<N>.csv``. Attention maps in the prediction (PatchConvNet with
    ``save_attention``) become ``<output>/attention/<image stem>.png``: the map of the top-1 class stretched over
    the image as a heat map. With ``save_visuals``, ``<output>/visuals/<image stem>.png`` shows the image with its
    top-1 class and probability.
    """

    def __init__(
        self,
        output: Path,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        top_k: int = 5,
        save_visuals: bool = False,
        **_,
    ) -> None:
        path = output if output.suffix == ".csv" else output / "predictions.csv"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.class_names = pl_module.class_names
        self.k = min(top_k, len(self.class_names))
        self.folder = path.parent
        self.save_visuals = save_visuals
        self._taken: dict[str, set[str]] = {"attention": set(), "visuals": set()}
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
        if "attention" in prediction or self.save_visuals:
            self._write_images(prediction, indices[:, 0].tolist(), probs[:, 0].tolist())

    def _write_images(self, prediction: dict, top1: list[int], prob1: list[float]) -> None:
        for i, path in enumerate(prediction["path"]):
            image, stem = read_image(path), Path(path).stem
            label = f"{self.class_names[top1[i]]} {prob1[i]:.2f}"
            if "attention" in prediction:
                heat = prediction["attention"][i]
                heat = heat[top1[i]] if heat.ndim == 3 else heat  # multi-token: the top-1 class's own map
                overlay = put_label(heatmap_overlay(image, heat.cpu().numpy()), label)
                write_rgb(unique_path(self.folder / "attention", stem, ".png", self._taken["attention"]), overlay)
            if self.save_visuals:
                visual = put_label(image.copy(), label)
                write_rgb(unique_path(self.folder / "visuals", stem, ".png", self._taken["visuals"]), visual)

    def close(self) -> Path:
        self._file.close()
        return self.path
