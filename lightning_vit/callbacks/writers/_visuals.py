"""Drawing helpers shared by the prediction writers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["heatmap_overlay", "put_label", "unique_path", "write_rgb"]


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a non-negative map (h, w), stretched to the image size and scaled to its maximum, over RGB ``image``."""
    heat = cv2.resize(heat.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_CUBIC)
    heat = np.clip(heat / max(float(heat.max()), 1e-12), 0, 1)
    colored = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (image * (1 - alpha) + colored * alpha).astype(np.uint8)


def put_label(image: np.ndarray, text: str, origin: tuple[int, int] = (4, 4), color=(255, 255, 255)) -> np.ndarray:
    """Write ``text`` on a dark box at ``origin`` (top-left), scaled to the image; in place, returns ``image``."""
    scale = max(0.35, min(image.shape[:2]) / 500)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = origin
    cv2.rectangle(image, (x, y), (x + w + 4, y + h + base + 4), (0, 0, 0), -1)
    cv2.putText(image, text, (x + 2, y + h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)
    return image


def unique_path(folder: Path, stem: str, suffix: str, taken: set[str]) -> Path:
    """``folder/stem.suffix``, or ``stem_1``, ``stem_2``... when images of the same name came from other folders."""
    name, n = stem, 0
    while name in taken:
        n += 1
        name = f"{stem}_{n}"
    taken.add(name)
    return folder / f"{name}{suffix}"


def write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
