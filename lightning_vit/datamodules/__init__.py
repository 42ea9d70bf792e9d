"""DataModules: files on disk -> decoded, augmented, collated batches."""

from lightning_vit.datamodules._io import DatasetError, read_image
from lightning_vit.datamodules.ade20k import ADE20KDataModule, DemoSegmentationDataModule, SegmentationFolderDataModule
from lightning_vit.datamodules.coco import COCODataModule, DemoDetectionDataModule
from lightning_vit.datamodules.demo import DemoShapesDataModule
from lightning_vit.datamodules.imagenet import ImageNetDataModule

__all__ = [
    "ADE20KDataModule",
    "COCODataModule",
    "DemoDetectionDataModule",
    "DatasetError",
    "DemoSegmentationDataModule",
    "DemoShapesDataModule",
    "ImageNetDataModule",
    "SegmentationFolderDataModule",
    "read_image",
]
