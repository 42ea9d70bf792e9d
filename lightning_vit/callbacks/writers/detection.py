"""Detection predictions: a COCO results json and, optionally, images with the detections drawn on them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
from pycocotools import mask as mask_utils

from lightning_vit.callbacks.writers._visuals import unique_path, write_rgb
from lightning_vit.datamodules._io import read_image

__all__ = ["DetectionWriter", "to_coco_results"]


def to_coco_results(prediction: dict, category_ids: list[int], file_name: str | None = None) -> list[dict]:
    """One image's detections as COCO results entries.

    Args:
        prediction: ``image_id``, ``boxes`` (N, 4) xyxy in the original image, ``scores``, ``labels`` (contiguous)
            and optionally ``masks`` (N, H, W) bool.
        category_ids: the source json's category id of each label.
        file_name: added to each entry (useful when predicting on a folder without a json).

    Returns:
        Dicts ``image_id``, ``category_id``, ``bbox`` (xywh), ``score`` and, with masks, ``segmentation``
        (compressed RLE with an ascii ``counts``).
    """
    boxes = prediction["boxes"].detach().double().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = prediction["scores"].detach().float().cpu().tolist()
    labels = prediction["labels"].detach().cpu().tolist()
    rles = None
    if "masks" in prediction:
        masks = prediction["masks"].detach().cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0))) if len(masks) else []
    results = []
    for i, (box, score, label) in enumerate(zip(xywh, scores, labels)):
        entry = {
            "image_id": int(prediction["image_id"]),
            "category_id": int(category_ids[label]),
            "bbox": [round(v, 3) for v in box],
            "score": round(float(score), 5),
        }
        if rles is not None:
            entry["segmentation"] = {"size": list(rles[i]["size"]), "counts": rles[i]["counts"].decode("ascii")}
        if file_name is not None:
            entry["file_name"] = file_name
        results.append(entry)
    return results


def _palette(n: int) -> list[tuple[int, int, int]]:
    hues = np.linspace(0, 179, max(n, 1), endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 200), np.full_like(hues, 255)], axis=1)[None]
    return [tuple(int(c) for c in rgb) for rgb in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]]


class DetectionWriter:
    """Write ``<output>/results.json`` (COCO results: image id and file name, source category ids, xywh boxes of
    the original image, scores, RLE masks for Mask R-CNN) and, with ``save_visuals``,
    ``<output>/visuals/<file name>.jpg`` with boxes, class names, scores and masks drawn over the original image.
    The file name is the json's, or the path under ``predict_root``: sub-folders are mirrored.

    Under several processes each writes ``results.rank<N>.json`` (concatenate them for evaluation).

    Args:
        output: folder to write into.
        trainer: the running trainer.
        pl_module: the detector; its ``category_ids`` and ``class_names`` come from the checkpoint.
        save_visuals: also write the overlay images.
        visual_score: detections below this score are not drawn (all go into ``results.json``).
    """

    def __init__(
        self,
        output: Path,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        save_visuals: bool = False,
        visual_score: float = 0.3,
        **_,
    ) -> None:
        name = "results.json" if trainer.world_size == 1 else f"results.rank{trainer.global_rank}.json"
        self.path = output / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.visuals = output / "visuals" if save_visuals else None
        if self.visuals is not None:
            self.visuals.mkdir(parents=True, exist_ok=True)
        self.visual_score = visual_score
        self.category_ids = list(pl_module.category_ids)
        self.class_names = list(pl_module.class_names)
        self.colors = _palette(len(self.class_names))
        self.results: list[dict] = []
        self._taken: dict[str, set[str]] = {}  # visual names used, per sub-folder

    def write(self, prediction: list[dict], batch: dict) -> None:
        for pred in prediction:
            self.results += to_coco_results(pred, self.category_ids, pred["file_name"])
            if self.visuals is not None:
                self._draw(pred)

    def _draw(self, pred: dict) -> None:
        image = read_image(pred["path"])
        keep = (pred["scores"] >= self.visual_score).cpu()
        boxes = pred["boxes"].cpu()[keep].round().int().tolist()
        labels = pred["labels"].cpu()[keep].tolist()
        scores = pred["scores"].cpu()[keep].tolist()
        if "masks" in pred:
            overlay = image.copy()
            for mask, label in zip(pred["masks"].cpu()[keep].numpy(), labels):
                overlay[mask] = self.colors[label]
            image = cv2.addWeighted(image, 0.55, overlay, 0.45, 0)
        for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores):
            color = self.colors[label]
            cv2.rectangle(image, (x1, y1), (x2, y2), color, 1)
            cv2.putText(
                image, f"{self.class_names[label]} {score:.2f}", (x1, max(y1 - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX,
                0.35, color, 1, cv2.LINE_AA,
            )  # fmt: skip
        relative = Path(pred["file_name"]).with_suffix("")
        taken = self._taken.setdefault(relative.parent.as_posix(), set())
        write_rgb(unique_path(self.visuals / relative.parent, relative.name, ".jpg", taken), image)

    def close(self) -> Path:
        self.path.write_text(json.dumps(self.results))
        return self.path
