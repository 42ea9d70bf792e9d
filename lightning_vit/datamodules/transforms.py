"""Albumentations pipelines for the ImageNet-style recipes (DeiT / Swin / CoaT training, resize + center-crop eval)."""

from __future__ import annotations

import re

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "classification_train_transform", "classification_eval_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


def _interpolation(name: str) -> int:
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {name!r}")
    return INTERPOLATIONS[name]


def rand_augment(policy: str) -> A.BaseCompose:
    """A RandAugment-like policy from a timm-style string such as ``rand-m9-mstd0.5-inc1``.

    ``n`` operations (default 2) are drawn per image from the usual RandAugment set; ``m`` (0-10) sets the
    strength. The per-image magnitude noise of timm (``mstd``) is approximated by sampling each operation's
    strength uniformly up to ``m * (1 + mstd)``; ``inc1`` (magnitudes that grow with ``m``) is what this policy
    always does.
    """
    if not policy.startswith("rand"):
        raise ValueError(f"auto_augment must look like 'rand-m9-mstd0.5-inc1', got {policy!r}")
    opts = dict(re.findall(r"-(m|n|mstd|inc)([\d.]+)", policy))
    m = min(float(opts.get("m", 9)) * (1 + float(opts.get("mstd", 0))), 10.0) / 10.0  # strength in [0, 1]
    ops = [
        A.Affine(rotate=(-30 * m, 30 * m), p=1.0),
        A.Affine(shear={"x": (-17 * m, 17 * m), "y": (0, 0)}, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-17 * m, 17 * m)}, p=1.0),
        A.Affine(translate_percent={"x": (-0.45 * m, 0.45 * m), "y": (0, 0)}, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.45 * m, 0.45 * m)}, p=1.0),
        A.ColorJitter(brightness=0.9 * m, contrast=0, saturation=0, hue=0, p=1.0),
        A.ColorJitter(brightness=0, contrast=0.9 * m, saturation=0, hue=0, p=1.0),
        A.ColorJitter(brightness=0, contrast=0, saturation=0.9 * m, hue=0, p=1.0),
        A.Sharpen(alpha=(0.1, min(0.9 * m + 0.1, 1.0)), p=1.0),
        A.Posterize(num_bits=(max(8 - round(4 * m), 1), 8), p=1.0),
        A.Solarize(threshold_range=(1.0 - m, 1.0), p=1.0),
        A.AutoContrast(p=1.0),
        A.Equalize(p=1.0),
    ]
    return A.SomeOf(ops, n=int(opts.get("n", 2)), replace=False, p=1.0)


def classification_train_transform(
    image_size: int = 224,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float = 0.0,
    re_prob: float = 0.25,
    interpolation: str = "bicubic",
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> A.Compose:
    """Random-resized crop, flip, RandAugment, normalise, random erasing (on normalised pixels), to tensor."""
    steps = [
        A.RandomResizedCrop(size=(image_size, image_size), scale=scale, interpolation=_interpolation(interpolation))
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if auto_augment:
        steps.append(rand_augment(auto_augment))
    elif color_jitter > 0:
        steps.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=1.0))
    steps.append(A.Normalize(mean=mean, std=std))
    if re_prob > 0:
        steps.append(A.Erasing(scale=(0.02, 1 / 3), ratio=(0.3, 3.3), fill="random_uniform", p=re_prob))
    steps.append(ToTensorV2())
    return A.Compose(steps)


def classification_eval_transform(
    image_size: int = 224,
    *,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> A.Compose:
    """Resize the short side to ``image_size / crop_pct``, center-crop ``image_size``, normalise, to tensor."""
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=int(image_size / crop_pct), interpolation=_interpolation(interpolation)),
            A.CenterCrop(image_size, image_size),
            A.Normalize(mean=mean, std=std),
            ToTensorV2(),
        ]
    )
