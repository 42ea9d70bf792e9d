"""Callbacks: atomic checkpoints, random states, the non-finite guard and prediction writers."""

from lightning_vit.callbacks.checkpoint import AtomicModelCheckpoint
from lightning_vit.callbacks.guards import NonFiniteError, NonFiniteGuard
from lightning_vit.callbacks.prediction import PredictionWriter
from lightning_vit.callbacks.rng import RandomState

__all__ = ["AtomicModelCheckpoint", "NonFiniteError", "NonFiniteGuard", "PredictionWriter", "RandomState"]
