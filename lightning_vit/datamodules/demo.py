"""Procedurally drawn demo data, generated on first use and written in the real on-disk layouts under ``data/``.

Shapes (circle, square, triangle, star, cross, ring) in random colours, sizes, rotations and positions over noisy
gradient backgrounds. The classification set uses the ImageNet folder layout, so the same DataModule, transforms
and CLI read it as they read ImageNet.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from lightning_vit.datamodules.imagenet import ImageNetDataModule

__all__ = ["SHAPES", "draw_shape", "make_shapes_classification", "DemoShapesDataModule"]

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if kind == "square":
        t = np.deg2rad(angle) + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif kind == "triangle":
        t = np.deg2rad(angle) + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    elif kind == "star":
        t = np.deg2rad(angle) + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    else:  # cross: a plus sign of arm width r/2
        a, b = r, r / 3
        pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                        (-a, -b), (-b, -b)])  # fmt: skip
        rot = np.deg2rad(angle)
        c, s = np.cos(rot), np.sin(rot)
        return (pts @ np.array([[c, s], [-s, c]]) + (cx, cy)).round().astype(np.int32)
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1).round().astype(np.int32)


def draw_shape(
    image: np.ndarray, kind: str, center: tuple[float, float], radius: float, angle: float, color: tuple[int, ...]
) -> np.ndarray:
    """Draw a filled shape into ``image`` (H, W, 3) in place; returns its boolean mask (H, W)."""
    mask = np.zeros(image.shape[:2], np.uint8)
    cx, cy = center
    if kind == "circle":
        cv2.circle(mask, (round(cx), round(cy)), round(radius), 1, -1, cv2.LINE_AA)
    elif kind == "ring":
        cv2.circle(mask, (round(cx), round(cy)), round(radius), 1, max(2, round(radius * 0.35)), cv2.LINE_AA)
    else:
        cv2.fillPoly(mask, [_polygon(kind, cx, cy, radius, angle)], 1, cv2.LINE_AA)
    image[mask > 0] = color
    return mask > 0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    ramp = ramp if rng.random() < 0.5 else ramp.transpose(1, 0, 2)
    image = c0 + (c1 - c0) * ramp + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _contrasting_color(rng: np.random.Generator, image: np.ndarray) -> tuple[int, int, int]:
    mean = image.reshape(-1, 3).mean(0)
    while True:
        color = rng.integers(0, 256, 3)
        if np.abs(color - mean).sum() > 150:
            return tuple(int(v) for v in color)


def make_shapes_classification(
    root: str | Path, *, train_per_class: int = 150, val_per_class: int = 40, image_size: int = 72, seed: int = 0
) -> Path:
    """Write the shapes classification set to ``root/{train,val}/<shape>/*.jpg`` unless it is already there.

    The set is written to a temporary folder and renamed into place, so an interrupted run never leaves half a
    dataset behind.
    """
    root = Path(root)
    if (root / "val").is_dir():
        return root
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for kind in SHAPES:
            folder = tmp / split / kind
            folder.mkdir(parents=True)
            for i in range(count):
                image = _background(rng, image_size)
                radius = rng.uniform(0.2, 0.42) * image_size
                center = rng.uniform(radius, image_size - radius, 2)
                draw_shape(image, kind, tuple(center), radius, rng.uniform(0, 360), _contrasting_color(rng, image))
                cv2.imwrite(str(folder / f"{kind}_{i:04d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(root)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote the demo shapes dataset to %s", root)
    return root


class DemoShapesDataModule(ImageNetDataModule):
    """:class:`ImageNetDataModule` over the generated shapes set (written to ``root`` on first use).

    Args:
        root: where the set lives (generated if missing).
        train_per_class: training images per class when generating.
        val_per_class: validation images per class when generating.
        **kwargs: any :class:`ImageNetDataModule` argument.
    """

    def __init__(
        self, root: str = "data/demo/shapes", train_per_class: int = 150, val_per_class: int = 40, **kwargs
    ) -> None:
        make_shapes_classification(root, train_per_class=train_per_class, val_per_class=val_per_class)
        super().__init__(root=root, **kwargs)
