"""Tasks: LightningModules that put a backbone, heads, losses and metrics together."""

from lightning_vit.tasks.base import BaseTask
from lightning_vit.tasks.classification import ImageClassifier
from lightning_vit.tasks.detection import ObjectDetector
from lightning_vit.tasks.segmentation import SemanticSegmenter

__all__ = ["BaseTask", "ImageClassifier", "ObjectDetector", "SemanticSegmenter"]
