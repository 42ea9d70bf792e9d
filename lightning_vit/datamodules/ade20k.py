"""Semantic segmentation data: ADE20K (``root/ADEChallengeData2016/{images,annotations}/{training,validation}``) or
any pair of image and mask folders, with mmseg's ADE20K pipeline written in albumentations.

Training: random rescale of ``scale`` (long, short) by a ratio in ``ratio_range`` keeping the aspect ratio, a random
``crop_size`` crop in which no class covers more than ``cat_max_ratio`` of the labelled pixels (10 tries), horizontal
flip, photometric distortion, normalisation, padding to ``crop_size`` (0 for the normalised image, ``ignore_index`` for
the mask). Evaluation, as mmseg's: the image is resized (bilinear) to fit ``scale`` keeping the ratio, the mask
stays at the file's size, and the task resizes the logits back to it before the loss and the metrics. Batches are
dicts ``image`` (B, 3, H, W) float and ``mask`` (B, H, W) long; evaluation batches of differently sized images are
padded the same way (images and masks each to their largest), with ``valid_size`` (B, 2) the resized images' own
(h, w) and ``size`` (B, 2) the masks'.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop
from albumentations.core.transforms_interface import DualTransform
from albumentations.pytorch import ToTensorV2
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch.utils.data import Dataset

from lightning_vit.datamodules._io import DatasetError, find_images, read_image
from lightning_vit.datamodules.base import BaseDataModule
from lightning_vit.datamodules.demo import SHAPES, make_shapes_segmentation
from lightning_vit.datamodules.imagenet import ImagePathDataset, default_num_workers
from lightning_vit.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "ADE20K_CLASSES",
    "RescaleToFit",
    "CatMaxRatioCrop",
    "SegmentationDataset",
    "pad_collate",
    "segmentation_train_transform",
    "segmentation_eval_transform",
    "SegmentationFolderDataModule",
    "ADE20KDataModule",
    "DemoSegmentationDataModule",
]

log = logging.getLogger(__name__)

# The 150 classes of the SceneParsing benchmark (objectInfo150), in label order 1..150 (0 is "other").
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

ADE20K_LAYOUT = (
    "expected layout: <root>/ADEChallengeData2016/{images,annotations}/{training,validation}/ with .jpg images and "
    ".png masks of the same name (see data/README.md); to try the project on generated data instead run "
    "`python -m lightning_vit fit --config configs/demo/upernet_coat_lite.yaml`"
)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class RescaleToFit(DualTransform):
    """Resize keeping the aspect ratio so the image fits ``scale`` x r, r drawn from ``ratio_range`` (mmseg's
    ``RandomResize`` + ``Resize(keep_ratio=True)``).

    The factor is ``min(r * max(scale) / long_side, r * min(scale) / short_side)``; sizes are rounded. Images are
    resized bilinearly, masks with nearest neighbour.

    Args:
        scale: (long, short) bound, e.g. (2048, 512) for ADE20K.
        ratio_range: range of r; (1, 1) for the deterministic evaluation resize.
    """

    def __init__(
        self, scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (1.0, 1.0), p: float = 1.0
    ) -> None:
        super().__init__(p=p)
        self.scale = (max(scale), min(scale))
        self.ratio_range = tuple(ratio_range)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        r = self.py_random.uniform(*self.ratio_range)
        factor = min(r * self.scale[0] / max(h, w), r * self.scale[1] / min(h, w))
        return {"size": (max(1, int(w * factor + 0.5)), max(1, int(h * factor + 0.5)))}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range")


class CatMaxRatioCrop(BaseCrop):
    """Random crop of at most ``size`` (h, w) in which no class covers more than ``cat_max_ratio`` of the labelled
    pixels (mmseg's ``RandomCrop``): up to 10 crops are drawn; the first one with at least two classes and no class
    over the ratio is kept, otherwise an eleventh draw. ``cat_max_ratio >= 1`` is a plain random crop.
    """

    def __init__(
        self, size: Sequence[int], cat_max_ratio: float = 0.75, ignore_index: int = 255, p: float = 1.0
    ) -> None:
        super().__init__(p=p)
        self.size = _pair(size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _draw(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        y, x = self.py_random.randint(0, h - ch), self.py_random.randint(0, w - cw)
        return x, y, x + cw, y + ch

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        box = self._draw(h, w)
        mask = data.get("mask")
        if self.cat_max_ratio < 1 and mask is not None:
            for _ in range(10):
                x1, y1, x2, y2 = box
                labels, counts = np.unique(mask[y1:y2, x1:x2], return_counts=True)
                counts = counts[labels != self.ignore_index]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._draw(h, w)
        return {"crop_coords": box}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "cat_max_ratio", "ignore_index")


def segmentation_train_transform(
    crop_size: int | Sequence[int] = 512,
    *,
    scale: Sequence[int] = (2048, 512),
    ratio_range: Sequence[float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    hflip: float = 0.5,
    photometric: bool = True,
    ignore_index: int = 255,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """mmseg's ADE20K training pipeline (see the module docstring).

    The photometric distortion is albumentations' counterpart of mmseg's ``PhotoMetricDistortion``, each part with
    probability 0.5: brightness +-32, contrast x[0.5, 1.5], saturation x[0.5, 1.5], hue +-18 (OpenCV hue units).
    """
    ch, cw = _pair(crop_size)
    steps: list[A.BasicTransform] = [
        RescaleToFit(scale, ratio_range),
        CatMaxRatioCrop((ch, cw), cat_max_ratio, ignore_index),
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if photometric:
        steps += [
            A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0.0, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.5, p=0.5),
            A.ColorJitter(brightness=0.0, contrast=0.0, saturation=(0.5, 1.5), hue=0.0, p=0.5),
            A.HueSaturationValue(hue_shift_limit=18, sat_shift_limit=0, val_shift_limit=0, p=0.5),
        ]
    steps += [
        A.Normalize(mean=mean, std=std),
        A.PadIfNeeded(ch, cw, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index),
        ToTensorV2(),
    ]
    return A.Compose(steps)


def segmentation_eval_transform(
    scale: Sequence[int] = (2048, 512),
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Resize (image and mask) to fit ``scale`` keeping the ratio, normalise, to tensor."""
    return A.Compose([RescaleToFit(scale), A.Normalize(mean=mean, std=std), ToTensorV2()])


def read_mask(path: Path) -> np.ndarray:
    """Decode a label PNG (grayscale, 16-bit or palette: the stored indices, not colours) to an (H, W) array."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("1", "L", "P", "I", "I;16"):
                raise DatasetError(
                    f"mask {path} is a {image.mode} image; expected a single-channel (grayscale or palette) PNG of "
                    "class indices"
                )
            return np.asarray(image).astype(np.int64)
    except OSError as err:
        raise DatasetError(f"cannot read mask {path}: {err}") from err


class SegmentationDataset(Dataset):
    """Images with masks of the same file stem; samples are dicts ``image`` (3, H, W) float and ``mask`` (H, W).

    Every image must have a mask (checked up front); a mask must have its image's size and hold values in
    ``[0, num_classes)`` or ``ignore_index`` after ``reduce_zero_label`` (checked when the sample is read).

    Args:
        images: folder of images.
        masks: folder of masks named ``<image stem><mask_suffix>``.
        transform: albumentations pipeline with image and mask targets, ending in ``ToTensorV2``.
        num_classes: number of classes.
        ignore_index: label of unlabelled pixels.
        reduce_zero_label: the stored label 0 means "other" (becomes ``ignore_index``) and labels 1..N become 0..N-1.
        mask_suffix: mask file name ending.
        key: config key named in errors.
    """

    def __init__(
        self,
        images: str | Path,
        masks: str | Path,
        transform: A.Compose,
        num_classes: int,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        mask_suffix: str = ".png",
        key: str = "data",
        original_mask: bool = False,
    ) -> None:
        self.images, self.masks = Path(images), Path(masks)
        self.original_mask = original_mask
        for folder, name in ((self.images, "images"), (self.masks, "masks")):
            if not folder.is_dir():
                raise DatasetError(f"{key}: {name} folder {folder} does not exist")
        self.transform = transform
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        image_paths = find_images(self.images)
        if not image_paths:
            raise DatasetError(f"{key}: {self.images} holds no images (.jpg, .png, ...)")
        self.samples = [(p, self.masks / f"{p.stem}{mask_suffix}") for p in image_paths]
        missing = [(i, m) for i, m in self.samples if not m.is_file()]
        if missing:
            image, mask = missing[0]
            raise DatasetError(
                f"image {image} has no mask (expected {mask}); {len(missing)} of {len(self.samples)} images in "
                f"{self.images} lack a mask"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded image (H, W, 3) and its checked label map (H, W) (after ``reduce_zero_label``)."""
        image_path, mask_path = self.samples[i]
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]} (width x height); they must have the same size"
            )
        if self.reduce_zero_label:
            mask = np.where(mask == self.ignore_index, self.ignore_index, mask - 1)
            mask[mask == -1] = self.ignore_index
        bad = (mask >= self.num_classes) | (mask < 0)
        bad &= mask != self.ignore_index
        if bad.any():
            values = np.unique(mask[bad])[:10] + (1 if self.reduce_zero_label else 0)
            raise DatasetError(
                f"mask {mask_path} holds values {values.tolist()} outside the {self.num_classes} classes "
                f"(expected 0..{self.num_classes - 1 + self.reduce_zero_label}"
                f"{' with 0 = other' if self.reduce_zero_label else ''}, or {self.ignore_index} = ignore)"
            )
        small = self.num_classes <= 256 and 0 <= self.ignore_index < 256  # a negative ignore_index needs int32
        return image, mask.astype(np.uint8 if small else np.int32)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, mask = self.load(i)
        if self.original_mask:  # evaluation: the transform resizes the image only
            mask = torch.as_tensor(mask).long()
            return {"image": self.transform(image=image)["image"], "mask": mask, "size": torch.tensor(mask.shape)}
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": torch.as_tensor(out["mask"]).long()}


def pad_collate(samples: list[dict], ignore_index: int = 255) -> dict:
    """Stack samples, zero-padding ``image`` and padding ``mask`` with ``ignore_index`` (bottom/right) to the largest
    size; ``valid_size`` (B, 2) keeps each image's own (h, w). Other tensors are stacked, other values listed."""
    sizes = [s["image"].shape[-2:] for s in samples]
    batch: dict = {"valid_size": torch.tensor([list(s) for s in sizes])}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in ("image", "mask"):
            fill = 0 if key == "image" else ignore_index
            h, w = max(v.shape[-2] for v in values), max(v.shape[-1] for v in values)
            out = values[0].new_full((len(values), *values[0].shape[:-2], h, w), fill)
            for o, v in zip(out, values):
                o[..., : v.shape[-2], : v.shape[-1]] = v
            batch[key] = out
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


class _Collate:
    """Picklable ``pad_collate`` with a fixed ``ignore_index`` (for DataLoader workers)."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, samples: list[dict]) -> dict:
        return pad_collate(samples, self.ignore_index)


class SegmentationFolderDataModule(BaseDataModule):
    """Semantic segmentation on any image folder + mask folder pairs (a user's own data).

    Masks are single-channel PNGs (grayscale, 16-bit or palette) named like their image; pixel values are class
    indices, ``ignore_index`` marks unlabelled pixels. ``class_names`` (or ``num_classes``) defines the classes and
    is stored in the checkpoint by the task, so prediction needs no dataset.

    Args:
        train_images: folder of training images.
        train_masks: folder of their masks.
        val_images: folder of validation images.
        val_masks: folder of their masks.
        test_images: folder of test images (default: the validation images).
        test_masks: folder of their masks.
        predict_root: an image or a folder of images (searched recursively) for ``predict``.
        num_classes: number of classes (``None``: ``len(class_names)``).
        class_names: names of the classes (``None``: "0", "1", ...).
        ignore_index: label of unlabelled pixels, also the mask padding value.
        reduce_zero_label: stored label 0 is "other" (ignored) and 1..N are the classes (ADE20K's convention).
        mask_suffix: mask file name ending after the image stem.
        crop_size: training crop (h, w) or one int.
        scale: (long, short) size the training rescale ratios apply to and evaluation images are fit into.
        ratio_range: training rescale ratio range.
        cat_max_ratio: most of a crop's labelled pixels one class may cover (1 disables the check).
        hflip: horizontal flip probability.
        photometric: apply the photometric distortion in training.
        batch_size: training images per process and step.
        val_batch_size: evaluation images per process and step (differently sized images are padded, which can change
            the predictions near the padding a little; mmseg evaluates one image at a time).
        predict_batch_size: prediction images per process and step (padded like ``val_batch_size``; with 1 an
            image's prediction does not depend on the other images).
        num_workers: DataLoader workers per process; ``None`` picks from the CPUs available (at most 8).
        pin_memory: ``None`` pins when CUDA is available.
        prefetch_factor: batches each DataLoader worker loads ahead; ``None`` keeps PyTorch's default (2). Unused
            without workers.
        skip_bad_samples: replace a sample whose files cannot be read (corrupt, truncated, empty or missing) by the
            next readable one instead of stopping the run; each is logged, and the count per training epoch and
            validation / test run is reported as ``<split>_skipped_samples`` (see data/README.md).
        mean: normalisation mean (RGB, 0-1).
        std: normalisation std.
    """

    def __init__(
        self,
        train_images: str | None = None,
        train_masks: str | None = None,
        val_images: str | None = None,
        val_masks: str | None = None,
        test_images: str | None = None,
        test_masks: str | None = None,
        predict_root: str | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        reduce_zero_label: bool = False,
        mask_suffix: str = ".png",
        crop_size: int | tuple[int, int] = 512,
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        hflip: float = 0.5,
        photometric: bool = True,
        batch_size: int = 2,
        val_batch_size: int = 1,
        predict_batch_size: int = 1,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        prefetch_factor: int | None = None,
        skip_bad_samples: bool = False,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if num_classes is None and class_names is None:
            raise ValueError("data.num_classes or data.class_names must be given")
        if num_classes is not None and class_names is not None and num_classes != len(class_names):
            raise ValueError(f"data.num_classes={num_classes} but {len(class_names)} class_names given")
        # the classes travel in the task's hparams (filled by the CLI); the same keys here would clash when logged
        self.save_hyperparameters(ignore=["class_names", "num_classes"])
        self.folders = {
            "train": (train_images, train_masks),
            "val": (val_images, val_masks),
            "test": (test_images or val_images, test_masks or val_masks),
        }
        self._class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor
        self.skip_bad_samples = skip_bad_samples
        self.datasets: dict[str, Dataset] = {}

    @property
    def class_names(self) -> list[str]:
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    def train_transform(self) -> A.Compose:
        hp = self.hparams
        return segmentation_train_transform(
            hp.crop_size, scale=hp.scale, ratio_range=hp.ratio_range, cat_max_ratio=hp.cat_max_ratio, hflip=hp.hflip,
            photometric=hp.photometric, ignore_index=hp.ignore_index, mean=hp.mean, std=hp.std,
        )  # fmt: skip

    def eval_transform(self) -> A.Compose:
        return segmentation_eval_transform(self.hparams.scale, mean=self.hparams.mean, std=self.hparams.std)

    def _dataset(self, split: str) -> SegmentationDataset:
        images, masks = self.folders[split]
        key = {"train": "data.train_images", "val": "data.val_images", "test": "data.test_images"}[split]
        if images is None or masks is None:
            raise DatasetError(f"{key} / {key.replace('images', 'masks')}: not set")
        hp = self.hparams
        return SegmentationDataset(
            images, masks, self.train_transform() if split == "train" else self.eval_transform(), self.num_classes,
            hp.ignore_index, hp.reduce_zero_label, hp.mask_suffix, key=key, original_mask=split != "train",
        )  # fmt: skip

    def setup(self, stage: str) -> None:
        if stage == "predict":
            if not self.hparams.predict_root:
                raise DatasetError("data.predict_root: not set; pass an image or a folder of images to predict on")
            self.datasets["predict"] = ImagePathDataset(self.hparams.predict_root, self._predict_transform())
            return
        for split in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}[stage]:
            self.datasets[split] = self._dataset(split)
            rank_zero_info(f"{split}: {len(self.datasets[split])} images in {self.datasets[split].images}")

    def _predict_transform(self) -> A.Compose:
        hp = self.hparams
        return A.Compose([RescaleToFit(hp.scale), A.Normalize(mean=hp.mean, std=hp.std), ToTensorV2()])

    def split_batch_size(self, split: str) -> int:
        hp = self.hparams
        return {"train": self.batch_size, "predict": hp.predict_batch_size}.get(split, hp.val_batch_size)

    def collate_fn(self) -> _Collate:
        return _Collate(self.hparams.ignore_index)


class ADE20KDataModule(SegmentationFolderDataModule):
    """ADE20K (SceneParsing, 150 classes) in its released layout, with mmseg's pipeline.

    Label 0 ("other") is ignored and 1..150 become 0..149 (``reduce_zero_label``). The validation split doubles as
    the test split.

    Args:
        root: folder holding ``ADEChallengeData2016``.
        class_names: class names (default: the 150 ADE20K classes); give them for another dataset in this layout.
        reduce_zero_label: stored label 0 is "other" (ignored) and 1..N are the classes.
        **kwargs: any :class:`SegmentationFolderDataModule` argument except the folders.
    """

    def __init__(
        self,
        root: str = "data/ade20k",
        class_names: list[str] | None = None,
        reduce_zero_label: bool = True,
        **kwargs,
    ) -> None:
        self.root = Path(root)
        base = self.root / "ADEChallengeData2016"
        class_names = list(class_names) if class_names is not None else list(ADE20K_CLASSES)  # as saved in hparams
        super().__init__(
            train_images=str(base / "images" / "training"),
            train_masks=str(base / "annotations" / "training"),
            val_images=str(base / "images" / "validation"),
            val_masks=str(base / "annotations" / "validation"),
            class_names=class_names,
            reduce_zero_label=reduce_zero_label,
            **kwargs,
        )

    def setup(self, stage: str) -> None:
        if stage != "predict" and not (self.root / "ADEChallengeData2016").is_dir():
            raise DatasetError(f"data.root: {self.root / 'ADEChallengeData2016'} does not exist; {ADE20K_LAYOUT}")
        super().setup(stage)


class DemoSegmentationDataModule(ADE20KDataModule):
    """:class:`ADE20KDataModule` over generated shapes (written to ``root`` on first use).

    Seven classes: ``background`` and the six shapes of :data:`~lightning_vit.datamodules.demo.SHAPES`. As in
    ADE20K, stored label 0 ("other": here the one-pixel band along every shape's outline, whose colour is blended) is
    ignored, 1 is the background and 2..7 the shapes, which ``reduce_zero_label`` maps to classes 0..6.

    Args:
        root: where the set lives (generated if missing).
        num_train: training images when generating.
        num_val: validation images when generating.
        image_size: (h, w) of the generated images.
        **kwargs: any :class:`SegmentationFolderDataModule` argument except the folders and classes.
    """

    def __init__(
        self,
        root: str = "data/demo/shapes_segmentation",
        num_train: int = 320,
        num_val: int = 60,
        image_size: tuple[int, int] = (96, 128),
        **kwargs,
    ) -> None:
        if kwargs.get("predict_root") is None:  # predicting on one's own images needs no generated set
            make_shapes_segmentation(root, num_train=num_train, num_val=num_val, image_size=image_size)
        super().__init__(root=root, class_names=["background", *SHAPES], **kwargs)
