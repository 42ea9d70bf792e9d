"""Tasks: LightningModules that put a backbone, heads, losses and metrics together."""

from lightning_vit.tasks.base import BaseTask
from lightning_vit.tasks.classification import ImageClassifier

__all__ = ["BaseTask", "ImageClassifier"]
