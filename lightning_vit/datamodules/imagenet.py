"""ImageNet-style classification data: ``root/{train,val}/<class>/*.JPEG``, or any folder of class folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from timm.data import Mixup
from timm.data.mixup import mixup_target
from torch.utils.data import Dataset

from lightning_vit.datamodules._io import IMAGE_EXTENSIONS, DatasetError, find_images, read_image
from lightning_vit.datamodules.base import BaseDataModule
from lightning_vit.datamodules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    classification_eval_transform,
    classification_train_transform,
)

__all__ = ["ImageFolderDataset", "ImagePathDataset", "ImageNetDataModule", "default_num_workers"]

log = logging.getLogger(__name__)

LAYOUT_HELP = (
    "expected layout: <root>/<split>/<class name>/<image files> (ImageNet: data/imagenet/train/n01440764/*.JPEG), "
    "see data/README.md; to try the project on generated demo data instead run "
    "`python -m lightning_vit fit --config configs/demo/coat_lite.yaml`"
)


def default_num_workers() -> int:
    """DataLoader workers per process: the CPUs this process may use, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus))


def find_classes(split_dir: Path, key: str = "data.root") -> list[str]:
    """Sorted class-folder names of ``split_dir``; raises a DatasetError naming the path if there are none."""
    if not split_dir.is_dir():
        raise DatasetError(f"{key}: {split_dir} does not exist; {LAYOUT_HELP}")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{key}: {split_dir} has no class sub-folders; {LAYOUT_HELP}")
    return classes


class ImageFolderDataset(Dataset):
    """Images in class sub-folders of ``root``; samples are dicts ``image`` (3, H, W) float and ``label``.

    Args:
        root: the split folder, e.g. ``data/imagenet/train``.
        transform: an albumentations pipeline ending in ``ToTensorV2``.
        class_names: the label order (from the training split); ``None`` uses ``root``'s sorted folders. A folder
            of ``root`` missing from ``class_names`` is an error, a class without images too.
    """

    def __init__(self, root: str | Path, transform, class_names: list[str] | None = None) -> None:
        self.root = Path(root)
        self.transform = transform
        found = find_classes(self.root)
        self.class_names = list(class_names) if class_names is not None else found
        unknown = sorted(set(found) - set(self.class_names))
        if unknown:
            raise DatasetError(f"{self.root} has class folders not in the training split: {unknown[:5]}")
        index = {name: i for i, name in enumerate(self.class_names)}
        self.samples: list[tuple[Path, int]] = []
        for name in found:
            images = find_images(self.root / name)
            if not images:
                raise DatasetError(f"class folder {self.root / name} holds no images (expected .jpg/.png/... files)")
            self.samples.extend((path, index[name]) for path in images)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path, label = self.samples[i]
        return {"image": self.transform(image=read_image(path))["image"], "label": torch.tensor(label)}


def _images_under(root: Path, key: str) -> list[Path]:
    """Image files under ``root``, sorted: linked folders followed (each real folder once), dot-names skipped."""
    paths, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or two links to one folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(folder, name)
            if name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if not path.exists():
                raise DatasetError(f"{key}: {path} is a link to a missing file ({os.readlink(path)})")
            paths.append(path)
    return sorted(paths)


class ImagePathDataset(Dataset):
    """Every image under ``root`` (recursively, following folder links, skipping hidden files and folders), for
    prediction: dicts ``image``, ``path``, ``file_name`` (the path relative to ``root``, "/"-separated, which
    writers mirror) and original ``size``. A link to a missing file is an error."""

    def __init__(self, root: str | Path, transform, key: str = "data.predict_root") -> None:
        self.root = Path(root)
        self.transform = transform
        if self.root.is_file():
            self.paths = [self.root]
        elif self.root.is_dir():
            self.paths = _images_under(self.root, key)
        else:
            raise DatasetError(f"{key}: {self.root} does not exist (expected an image file or a folder of images)")
        if not self.paths:
            raise DatasetError(f"{key}: {self.root} holds no images (.jpg, .jpeg, .png, .bmp, .webp, .tif)")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        image = read_image(self.paths[i])
        return {
            "image": self.transform(image=image)["image"],
            "path": str(self.paths[i]),
            "file_name": self.paths[i].name
            if self.paths[i] == self.root
            else self.paths[i].relative_to(self.root).as_posix(),
            "size": torch.tensor(image.shape[:2]),
        }


class ImageNetDataModule(BaseDataModule):
    """Classification data in the ImageNet folder layout; a user's own class folders work the same way.

    The training split's sorted class folders define ``class_names`` (and so ``num_classes``); they are stored in
    the checkpoint by the classification task, so prediction needs no dataset.

    Args:
        root: dataset root holding the split folders.
        train_split: folder of the training split under ``root``.
        val_split: folder of the validation split.
        test_split: folder of the test split (default: the validation split).
        predict_root: an image or a folder of images (searched recursively) for ``predict``.
        image_size: training crop and evaluation size.
        batch_size: images per process and step.
        num_workers: DataLoader workers per process; ``None`` picks from the CPUs available (at most 8).
        pin_memory: ``None`` pins when CUDA is available.
        prefetch_factor: batches each DataLoader worker loads ahead; ``None`` keeps PyTorch's default (2). Unused
            without workers.
        skip_bad_samples: replace a sample whose files cannot be read (corrupt, truncated, empty or missing) by the
            next readable one instead of stopping the run; each is logged, and the count per training epoch and
            validation / test run is reported as ``<split>_skipped_samples`` (see data/README.md).
        eval_crop_pct: evaluation resizes the short side to ``image_size / eval_crop_pct`` then center-crops.
        interpolation: ``bicubic``, ``bilinear`` or ``nearest``.
        scale: random-resized-crop area range.
        hflip: horizontal flip probability.
        auto_augment: RandAugment policy string (``rand-m9-mstd0.5-inc1``) or ``None``.
        re_prob: random-erasing probability.
        mixup: mixup alpha (0 disables).
        cutmix: cutmix alpha (0 disables).
        mixup_prob: probability of applying mixup or cutmix to a batch.
        mixup_switch_prob: probability of cutmix instead of mixup when both are enabled.
        label_smoothing: label smoothing of the training targets (applied with or without mixup).
        mean: normalisation mean (RGB, 0-1).
        std: normalisation std.
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        predict_root: str | None = None,
        image_size: int = 224,
        batch_size: int = 128,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        prefetch_factor: int | None = None,
        skip_bad_samples: bool = False,
        eval_crop_pct: float = 0.875,
        interpolation: str = "bicubic",
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if (mixup > 0 or cutmix > 0) and batch_size % 2:
            raise ValueError(f"data.batch_size must be even when mixup/cutmix are on, got {batch_size}")
        self.save_hyperparameters()
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor
        self.skip_bad_samples = skip_bad_samples
        self._class_names: list[str] | None = None
        self.mixup_fn: Mixup | None = None
        self.datasets: dict[str, Dataset] = {}

    @property
    def class_names(self) -> list[str]:
        """Class names, from the training split's folders (scanned once)."""
        if self._class_names is None:
            self._class_names = find_classes(self.root / self.hparams.train_split)
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _train_transform(self):
        hp = self.hparams
        return classification_train_transform(
            hp.image_size, scale=tuple(hp.scale), hflip=hp.hflip, auto_augment=hp.auto_augment, re_prob=hp.re_prob,
            interpolation=hp.interpolation, mean=hp.mean, std=hp.std,
        )  # fmt: skip

    def eval_transform(self):
        hp = self.hparams
        return classification_eval_transform(
            hp.image_size, crop_pct=hp.eval_crop_pct, interpolation=hp.interpolation, mean=hp.mean, std=hp.std
        )

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "predict":
            if not hp.predict_root:
                raise DatasetError("data.predict_root: not set; pass an image or a folder of images to predict on")
            self.datasets["predict"] = ImagePathDataset(hp.predict_root, self.eval_transform())
            return
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}[stage]
        folders = {"train": hp.train_split, "val": hp.val_split, "test": hp.test_split or hp.val_split}
        for split in splits:
            transform = self._train_transform() if split == "train" else self.eval_transform()
            self.datasets[split] = ImageFolderDataset(self.root / folders[split], transform, self.class_names)
            rank_zero_info(f"{split}: {len(self.datasets[split])} images in {self.root / folders[split]}")
        if stage == "fit" and (hp.mixup > 0 or hp.cutmix > 0):
            self.mixup_fn = Mixup(
                mixup_alpha=hp.mixup, cutmix_alpha=hp.cutmix, prob=hp.mixup_prob, switch_prob=hp.mixup_switch_prob,
                label_smoothing=hp.label_smoothing, num_classes=self.num_classes,
            )  # fmt: skip

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """On training batches: mixup/cutmix and label smoothing as soft targets in ``batch["soft_label"]``."""
        if self.trainer is None or not self.trainer.training:
            return batch
        if self.mixup_fn is not None:
            label = batch["label"]
            batch["image"], batch["soft_label"] = self.mixup_fn(batch["image"], label)
        elif self.hparams.label_smoothing > 0:
            batch["soft_label"] = mixup_target(batch["label"], self.num_classes, smoothing=self.hparams.label_smoothing)
        return batch
