"""Procedurally drawn demo data, generated on first use and written in the real on-disk layouts under ``data/``.

Shapes (circle, square, triangle, star, cross, ring) in random bright colours, sizes, rotations and positions over dark
noisy gradient backgrounds. The classification set uses the ImageNet folder layout, so the same DataModule, transforms
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

__all__ = [
    "SHAPES",
    "draw_shape",
    "make_shapes_classification",
    "make_shapes_segmentation",
    "make_shapes_detection",
    "DemoShapesDataModule",
]

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
    """A dark colour with a gentle gradient and mild pixel noise: the shapes, not the backdrop, carry the label."""
    c0 = rng.integers(0, 90, 3)
    c1 = np.clip(c0 + rng.integers(-30, 31, 3), 0, 255)
    ramp = np.linspace(0, 1, size)[:, None, None]
    ramp = ramp if rng.random() < 0.5 else ramp.transpose(1, 0, 2)
    image = c0 + (c1 - c0) * ramp + rng.normal(0, 4, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A bright colour. Shapes are always lighter than the backdrop: with both polarities a model trained from
    scratch needs several times the steps to learn contrast-invariant edges (measured: a CoaT-Lite Tiny stays near
    chance after 500 steps with random polarity and reaches 89% top-1 after 400 with a fixed one)."""
    return tuple(int(v) for v in rng.integers(150, 256, 3))


def make_shapes_classification(
    root: str | Path, *, train_per_class: int = 300, val_per_class: int = 50, image_size: int = 72, seed: int = 0
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
                draw_shape(image, kind, tuple(center), radius, rng.uniform(0, 360), _shape_color(rng))
                cv2.imwrite(str(folder / f"{kind}_{i:04d}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(root)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote the demo shapes dataset to %s", root)
    return root


def make_shapes_segmentation(
    root: str | Path,
    *,
    num_train: int = 320,
    num_val: int = 60,
    image_size: tuple[int, int] = (96, 128),
    max_shapes: int = 3,
    seed: int = 0,
) -> Path:
    """Write a shapes semantic-segmentation set in the ADE20K layout unless it is already there.

    ``root/ADEChallengeData2016/{images,annotations}/{training,validation}/`` with ``ADE_<split>_<n>.jpg`` images
    (``image_size`` h x w, 1 to ``max_shapes`` shapes that may overlap) and ``.png`` masks of the same name. Mask
    values follow ADE20K's convention for ``reduce_zero_label``: 0 is "other" (here the band along each outline,
    where colours are blended, so it is ignored), 1 the background and 2..7 the shapes in :data:`SHAPES` order.
    Written to a temporary folder and renamed into place, like :func:`make_shapes_classification`.
    """
    root = Path(root)
    if (root / "ADEChallengeData2016" / "annotations" / "validation").is_dir():
        return root
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    h, w = image_size
    kernel = np.ones((3, 3), np.uint8)
    for split, count in (("training", num_train), ("validation", num_val)):
        base = tmp / "ADEChallengeData2016"
        images, masks = base / "images" / split, base / "annotations" / split
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        for n in range(count):
            image = np.ascontiguousarray(_background(rng, max(h, w))[:h, :w])
            label = np.ones((h, w), np.uint8)
            for _ in range(rng.integers(1, max_shapes + 1)):
                kind = SHAPES[rng.integers(len(SHAPES))]
                radius = rng.uniform(0.12, 0.3) * min(h, w)
                center = (rng.uniform(radius, w - radius), rng.uniform(radius, h - radius))
                shape = draw_shape(image, kind, center, radius, rng.uniform(0, 360), _shape_color(rng))
                label[shape] = 2 + SHAPES.index(kind)
            label[cv2.dilate(label, kernel) != cv2.erode(label, kernel)] = 0
            name = f"ADE_{'train' if split == 'training' else 'val'}_{n + 1:08d}"
            cv2.imwrite(str(images / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(masks / f"{name}.png"), label)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(root)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote the demo shapes segmentation dataset to %s", root)
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
        self, root: str = "data/demo/shapes", train_per_class: int = 300, val_per_class: int = 50, **kwargs
    ) -> None:
        if kwargs.get("predict_root") is None:  # predicting on one's own images needs no generated set
            make_shapes_classification(root, train_per_class=train_per_class, val_per_class=val_per_class)
        super().__init__(root=root, **kwargs)


def _shape_segmentation(kind: str, mask: np.ndarray) -> list[list[float]] | dict:
    """A ring as compressed RLE (it has a hole), the other shapes as polygons traced from their mask."""
    from pycocotools import mask as mask_utils

    if kind == "ring":
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def make_shapes_detection(
    root: str | Path,
    *,
    train_count: int = 400,
    val_count: int = 100,
    image_size: int = 128,
    max_shapes: int = 4,
    category_ids: tuple[int, ...] = (1, 2, 3, 4, 5, 6),
    seed: int = 0,
) -> Path:
    """Write a shapes detection / instance-segmentation set in the COCO layout unless it is already there.

    ``root/{train2017,val2017}/*.jpg`` and ``root/annotations/instances_{train,val}2017.json``: 0 to
    ``max_shapes`` non-overlapping shapes per image, one category per kind in :data:`SHAPES` (json ids
    ``category_ids``), rings with compressed-RLE masks and the other shapes with polygons. Written to a temporary
    folder and renamed into place, like :func:`make_shapes_classification`.
    """
    import json

    from pycocotools import mask as mask_utils

    root = Path(root)
    if (root / "annotations" / "instances_val2017.json").is_file():
        return root
    if len(category_ids) != len(SHAPES):
        raise ValueError(f"category_ids needs {len(SHAPES)} ids (one per shape), got {category_ids}")
    tmp = root.with_name(f".{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    categories = [{"id": int(i), "name": kind, "supercategory": "shape"} for i, kind in zip(category_ids, SHAPES)]
    ann_id = 1
    for split, count in (("train2017", train_count), ("val2017", val_count)):
        (tmp / split).mkdir()
        images, annotations = [], []
        for n in range(count):
            image_id = n + 1
            image = _background(rng, image_size)
            taken = np.zeros((image_size, image_size), bool)
            for _ in range(rng.integers(0, max_shapes + 1)):
                kind = SHAPES[rng.integers(len(SHAPES))]
                radius = rng.uniform(0.08, 0.22) * image_size
                center, angle = tuple(rng.uniform(radius, image_size - radius, 2)), rng.uniform(0, 360)
                probe = draw_shape(np.zeros_like(image), kind, center, radius, angle, (1, 1, 1))
                if (probe & taken).any() or probe.sum() < 16:
                    continue
                mask = draw_shape(image, kind, center, radius, angle, _shape_color(rng))
                taken |= cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
                x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": int(category_ids[SHAPES.index(kind)]),
                    "bbox": [float(x), float(y), float(w), float(h)], "area": float(mask_utils.area(rle)),
                    "iscrowd": 0, "segmentation": _shape_segmentation(kind, mask),
                })  # fmt: skip
                ann_id += 1
            file_name = f"{image_id:06d}.jpg"
            cv2.imwrite(str(tmp / split / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        dataset = {"images": images, "annotations": annotations, "categories": categories}
        (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset))
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(root)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote the demo shapes detection dataset to %s", root)
    return root
