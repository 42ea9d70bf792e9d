from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"


def write_image_folder(root: Path, classes=("circle", "square", "star"), per_class: int = 4, size: int = 40) -> Path:
    """A tiny classification split in the ImageNet layout: ``root/<class>/*.jpg`` with a class-dependent colour."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size + 8, 3), dtype=np.uint8)
            image[8:-8, 8:-8, c % 3] = 220
            cv2.imwrite(str(root / name / f"{name}_{i}.jpg"), image)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """``tmp_path/data/{train,val}/<class>/*`` with three classes, plus a grayscale PNG and an RGBA PNG."""
    data = tmp_path / "data"
    write_image_folder(data / "train", per_class=4)
    write_image_folder(data / "val", per_class=2)
    gray = np.full((30, 50), 128, np.uint8)
    cv2.imwrite(str(data / "train" / "circle" / "gray.png"), gray)
    rgba = np.zeros((36, 36, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    cv2.imwrite(str(data / "val" / "square" / "rgba.png"), rgba)
    return data
