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
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read image {path}: {err.strerror or err}") from err
    if not raw:
        raise DatasetError(f"cannot decode image {path}: the file is empty (0 bytes)")
    if _is_truncated(raw):
        raise DatasetError(f"cannot decode image {path}: the file is truncated (its end-of-image marker is missing)")
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot decode image {path}: not a readable image file (corrupt or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _is_truncated(buf: bytes) -> bool:
    """A JPEG whose image data has no EOI marker after it, or a PNG whose chunks end before IEND (OpenCV would
    decode half). Bytes after the end (a motion photo's video, a trailer) are allowed, as decoders do."""
    if buf.startswith(b"\xff\xd8"):
        scan = _jpeg_first_scan(buf)
        return scan is None or buf.rfind(b"\xff\xd9", scan) == -1  # an EXIF thumbnail's EOI comes before the scan
    if buf.startswith(b"\x89PNG\r\n\x1a\n"):
        pos = 8
        while pos + 8 <= len(buf):  # chunks: 4-byte length, 4-byte type, data, 4-byte CRC
            if buf[pos + 4 : pos + 8] == b"IEND":
                return False
            pos += 12 + int.from_bytes(buf[pos : pos + 4], "big")
        return True
    return False


def _jpeg_first_scan(buf: bytes) -> int | None:
    """Offset of a JPEG's first start-of-scan marker, found by walking its header segments; None if they end first."""
    pos = 2
    while pos + 4 <= len(buf):
        if buf[pos] != 0xFF:  # not a marker where one should be: let the decoder judge the file
            return 2
        marker = buf[pos + 1]
        if marker == 0xDA:
            return pos
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(buf[pos + 2 : pos + 4], "big")
    return None


def find_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by extension, case-insensitive), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
