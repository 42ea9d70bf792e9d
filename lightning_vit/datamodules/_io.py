"""Image decoding and dataset-folder scanning shared by every DataModule."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "DatasetError", "find_images", "read_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset on disk is missing, empty or inconsistent; the message names the path and what was expected."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an RGB ``uint8`` array (H, W, 3).

    Grayscale and CMYK images become RGB, an alpha channel is dropped, 16-bit images are scaled to 8 bits and the
    EXIF orientation is applied (OpenCV's ``IMREAD_COLOR``).

    Raises:
        DatasetError: the file is missing, empty, truncated or not an image.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DatasetError(f"cannot read image {path}: {err.strerror or err}") from err
    if data.size == 0:
        raise DatasetError(f"cannot decode image {path}: the file is empty (0 bytes)")
    if _is_truncated(data):
        raise DatasetError(f"cannot decode image {path}: the file is truncated (its end-of-image marker is missing)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot decode image {path}: not a readable image file (corrupt or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _is_truncated(data: np.ndarray) -> bool:
    """A JPEG without its EOI marker or a PNG without its IEND chunk near the end (OpenCV would decode half)."""
    head, tail = data[:8].tobytes(), data[-1024:].tobytes()
    if head.startswith(b"\xff\xd8"):
        return b"\xff\xd9" not in tail
    if head.startswith(b"\x89PNG"):
        return b"IEND" not in tail
    return False


def find_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by extension, case-insensitive), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
