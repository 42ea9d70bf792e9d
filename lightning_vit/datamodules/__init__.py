"""DataModules: files on disk -> decoded, augmented, collated batches."""

from lightning_vit.datamodules._io import DatasetError, read_image
from lightning_vit.datamodules.demo import DemoShapesDataModule
from lightning_vit.datamodules.imagenet import ImageNetDataModule

__all__ = ["DatasetError", "DemoShapesDataModule", "ImageNetDataModule", "read_image"]
