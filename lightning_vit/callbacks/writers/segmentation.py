"""Segmentation predictions: one palette PNG of class indices per image, and optional colour overlays."""

from __future__ import annotations

from pathlib import Path

import cv2
import lightning as L
import numpy as np
from PIL import Image

from lightning_vit.callbacks.writers._visuals import unique_path, write_rgb
from lightning_vit.datamodules._io import read_image

__all__ = ["SegmentationWriter", "palette"]


def palette(num_colors: int = 256) -> np.ndarray:
    """(num_colors, 3) uint8 colours, the PASCAL VOC bit-interleaved palette (0 black, 1 dark red, 2 dark green...)."""
    colors = np.zeros((num_colors, 3), np.uint8)
    for i in range(num_colors):
        c, shift = i, 7
        while c:
            for channel in range(3):
                colors[i, channel] |= ((c >> channel) & 1) << shift
            c >>= 3
            shift -= 1
    return colors


class SegmentationWriter:
    """Write ``<output>/masks/<file name>.png`` per image and, with ``save_visuals``, ``<output>/visuals/<file
    name>.png``, the file name being the image's path under ``predict_root`` (sub-folders are mirrored) with the
    suffix replaced.

    A mask PNG has the input image's size and stores class indices as a palette ("P" mode) image, so viewers show
    colours while ``PIL.Image.open(path)`` reads back the indices (OpenCV would decode the colours). With more than
    256 classes the mask is a 16-bit grayscale PNG of the indices instead. The overlay blends the image with the
    class colours (alpha 0.5). Two images that differ only in their suffix (``a.jpg``, ``a.png``) get ``a_1.png``.
    """

    def __init__(
        self, output: Path, trainer: L.Trainer, pl_module: L.LightningModule, save_visuals: bool = False, **_
    ) -> None:
        self.output = Path(output)
        self.masks = self.output / "masks"
        self.masks.mkdir(parents=True, exist_ok=True)
        self.visuals = self.output / "visuals" if save_visuals else None
        if self.visuals is not None:
            self.visuals.mkdir(parents=True, exist_ok=True)
        self.num_classes = pl_module.num_classes
        self.colors = palette(256)
        self._taken: dict[str, set[str]] = {}  # names used, per sub-folder

    def write(self, prediction: dict, batch: dict) -> None:
        for mask, path, name in zip(prediction["mask"], prediction["path"], prediction["file_name"]):
            mask = mask.cpu().numpy()
            relative = Path(name).with_suffix("")
            taken = self._taken.setdefault(relative.parent.as_posix(), set())
            target = unique_path(self.masks / relative.parent, relative.name, ".png", taken)
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.num_classes <= 256:
                image = Image.fromarray(mask.astype(np.uint8))
                image.putpalette(self.colors.reshape(-1).tolist())  # "L" -> "P"
                image.save(target)
            else:
                cv2.imwrite(str(target), mask.astype(np.uint16))
            if self.visuals is not None:
                rgb = read_image(path)
                overlay = (0.5 * rgb + 0.5 * self.colors[mask % 256]).astype(np.uint8)
                write_rgb(self.visuals / target.relative_to(self.masks), overlay)

    def close(self) -> Path:
        return self.output
