"""Callbacks: atomic checkpoints and prediction writers."""

from lightning_vit.callbacks.checkpoint import AtomicModelCheckpoint
from lightning_vit.callbacks.prediction import PredictionWriter

__all__ = ["AtomicModelCheckpoint", "PredictionWriter"]
