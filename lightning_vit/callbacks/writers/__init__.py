"""Per-task prediction writers used by :class:`lightning_vit.callbacks.PredictionWriter`.

A writer is made for one ``predict`` run: ``Writer(output, trainer, pl_module, **options)``, then ``write(prediction,
batch)`` per batch and ``close()`` at the end. ``WRITERS`` maps a task's ``prediction_format`` to its writer.
"""

from lightning_vit.callbacks.writers.classification import ClassificationWriter

WRITERS = {"classification": ClassificationWriter}

__all__ = ["WRITERS", "ClassificationWriter"]
