"""Per-task prediction writers used by :class:`lightning_vit.callbacks.PredictionWriter`.

A writer is made for one ``predict`` run: ``Writer(output, trainer, pl_module, top_k=..., save_visuals=...)``, then
``write(prediction, batch)`` per batch and ``close() -> Path`` (what it wrote) at the end. ``WRITERS`` maps a task's
``prediction_format`` to the import path of its writer (imported on use, so a task's extras load only when needed).
"""

from __future__ import annotations

import importlib

WRITERS = {
    "classification": "lightning_vit.callbacks.writers.classification.ClassificationWriter",
    "segmentation": "lightning_vit.callbacks.writers.segmentation.SegmentationWriter",
    "detection": "lightning_vit.callbacks.writers.detection.DetectionWriter",
}

__all__ = ["WRITERS", "get_writer"]


def get_writer(prediction_format: str) -> type:
    """The writer class of a task's ``prediction_format``."""
    if prediction_format not in WRITERS:
        raise ValueError(f"no prediction writer for format {prediction_format!r}; known: {sorted(WRITERS)}")
    module, _, name = WRITERS[prediction_format].rpartition(".")
    return getattr(importlib.import_module(module), name)
