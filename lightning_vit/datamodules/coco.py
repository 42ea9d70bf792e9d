"""COCO-format detection and instance-segmentation data: ``root/{train2017,val2017}`` images and
``root/annotations/instances_{train,val}2017.json``, or any image folder with a COCO-format json.

Batches (see :func:`collate_detection`) are dicts of per-image lists, because images differ in size:

- ``image``: list of (3, H, W) float tensors, already normalised with ``mean`` / ``std`` (the detector only pads
  and batches them; normalisation and resizing happen here and nowhere else);
- ``target`` (not in ``predict``): list of dicts ``boxes`` (N, 4) float xyxy pixels, ``labels`` (N,) int64
  contiguous in ``0..K-1`` (the order of ``class_names``), ``masks`` (N, H, W) uint8 (with ``with_masks``),
  ``image_id``, and for evaluation ``iscrowd`` and ``area``;
- ``image_id`` (B,) int64: the json's image ids (in ``predict`` on a folder: the index of the file, sorted);
- ``orig_size`` (B, 2): (height, width) of the image file, the frame annotations and predictions live in;
- ``path``: list of image file paths.

Training targets are in the coordinates of the augmented image (crowd annotations dropped, boxes clipped to the
image, degenerate boxes dropped). Evaluation targets are the json's annotations unchanged, in the original image
(crowd regions included with ``iscrowd = 1``, ``area`` from the json), which is what COCO evaluation compares
against: the task rescales its predictions to ``orig_size`` before the metric sees them. An annotation without
``segmentation`` gets its box filled as its mask.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.geometric.resize import MaxSizeTransform
from albumentations.core.transforms_interface import BaseTransformInitSchema
from albumentations.pytorch import ToTensorV2
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from lightning_vit.datamodules._io import DatasetError, read_image
from lightning_vit.datamodules.base import BaseDataModule
from lightning_vit.datamodules.imagenet import ImagePathDataset, default_num_workers
from lightning_vit.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "COCODataModule",
    "COCODetectionDataset",
    "DemoDetectionDataModule",
    "ResizeShortestEdge",
    "collate_detection",
    "decode_segmentation",
    "detection_eval_transform",
    "detection_train_transform",
    "load_coco",
]

log = logging.getLogger(__name__)

LAYOUT_HELP = (
    "expected COCO layout: <root>/train2017/*.jpg, <root>/val2017/*.jpg and "
    "<root>/annotations/instances_{train,val}2017.json (or set data.train_images/train_ann/val_images/val_ann); "
    "see data/README.md; to try the project on generated data run "
    "`python -m lightning_vit fit --config configs/demo/mask_rcnn_coat_lite.yaml`"
)
DEFAULT_TRAIN_SCALES = tuple(range(480, 801, 32))
EXIF_ORIENTATION = 0x0112


def load_coco(path: str | Path, key: str) -> COCO:
    """Read a COCO-format json with pycocotools (its progress prints silenced).

    Raises:
        DatasetError: naming ``key`` and the file when it is missing, not a COCO json or lists no images.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{key}: {path} does not exist; {LAYOUT_HELP}")
    try:
        dataset = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{key}: cannot read {path} as json: {err}") from err
    missing = [k for k in ("images", "annotations", "categories") if k not in dataset]
    if not isinstance(dataset, dict) or missing:
        raise DatasetError(f"{key}: {path} is not a COCO instances json (missing {missing})")
    if not dataset["images"]:
        raise DatasetError(f'{key}: {path} lists no images (expected at least one entry in its "images")')
    _check_entries(dataset, path, key)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _check_entries(dataset: dict, path: Path, key: str) -> None:
    """The fields every entry needs (pycocotools and the datasets index them), and RLE masks of their image's size."""
    required = {
        "images": ("id", "file_name", "width", "height"),
        "annotations": ("id", "image_id", "category_id", "bbox"),
        "categories": ("id",),
    }
    for section, fields in required.items():
        for n, entry in enumerate(dataset[section]):
            lacking = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if lacking:
                raise DatasetError(f'{key}: {path}: "{section}" entry {n} lacks {lacking} (expected {list(fields)})')
    sizes = {image["id"]: [image["height"], image["width"]] for image in dataset["images"]}
    for ann in dataset["annotations"]:
        bbox, segmentation = ann["bbox"], ann.get("segmentation")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DatasetError(f"{key}: {path}: annotation {ann['id']} has bbox {bbox!r} (expected [x, y, w, h])")
        if isinstance(segmentation, dict) and segmentation.get("size") != sizes.get(ann["image_id"]):
            raise DatasetError(
                f"{key}: {path}: annotation {ann['id']} has an RLE mask of size {segmentation.get('size')} but its "
                f"image {ann['image_id']} is {sizes.get(ann['image_id'])} (expected [height, width] of the image)"
            )


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as a (H, W) uint8 mask; None if absent."""
    if not segmentation:
        return None
    if isinstance(segmentation, list):  # polygons of one object; parts of under 3 points are dropped, as mmdet does
        polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(np.uint8)


class ResizeShortestEdge(MaxSizeTransform):
    """Resize the short side to a size drawn from ``max_size`` while the long side stays <= ``long_max``.

    Detectron2 / mmdet's multi-scale detection resize (``scale = min(short / min(h, w), long_max / max(h, w))``);
    boxes follow (albumentations keeps them normalised), masks are resized with nearest neighbour.

    Args:
        max_size: the short-side size, or a list to draw one from per image.
        long_max: the largest allowed long side.
        interpolation: OpenCV interpolation of the image.
        p: probability of applying.
    """

    class InitSchema(BaseTransformInitSchema):
        max_size: int | list[int]
        long_max: int
        interpolation: int

    def __init__(
        self, max_size: int | list[int], long_max: int = 1333, interpolation: int = cv2.INTER_LINEAR, p: float = 1.0
    ) -> None:
        super().__init__(max_size=max_size, max_size_hw=None, interpolation=interpolation, p=p)
        self.long_max = long_max

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        short = self.py_random.choice(self.max_size) if isinstance(self.max_size, (list, tuple)) else self.max_size
        return {"scale": min(short / min(h, w), self.long_max / max(h, w))}


def detection_train_transform(
    scales: list[int] = DEFAULT_TRAIN_SCALES,
    max_size: int = 1333,
    *,
    hflip: float = 0.5,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> A.Compose:
    """Multi-scale resize (short side from ``scales``, long side <= ``max_size``), flip, normalise, to tensor.

    Call with ``image``, ``masks`` (list of (H, W)), ``bboxes`` (pascal_voc xyxy pixels), ``labels`` and
    ``indices`` (the annotation index of each box, to keep masks aligned with the boxes that survive).
    """
    steps = [ResizeShortestEdge(list(scales), long_max=max_size)]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    steps += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(steps, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels", "indices"]))


def detection_eval_transform(
    scale: int = 800,
    max_size: int = 1333,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> A.Compose:
    """Resize the short side to ``scale`` (long side <= ``max_size``), normalise, to tensor (image only)."""
    return A.Compose([ResizeShortestEdge(scale, long_max=max_size), A.Normalize(mean=mean, std=std), ToTensorV2()])


class COCODetectionDataset(Dataset):
    """Images of a COCO-format json; samples as described in the module docstring.

    Args:
        images_dir: folder the json's ``file_name`` entries are relative to.
        coco: the loaded json (:func:`load_coco`).
        category_ids: the json category id of each contiguous label.
        transform: :func:`detection_train_transform` (``train``) or :func:`detection_eval_transform`.
        train: training targets (augmented, crowd dropped, boxes clipped, degenerate boxes dropped) rather than
            evaluation targets (the json's annotations in the original image).
        filter_empty: drop images without (non-crowd) annotations; only with ``train``.
        with_masks: decode instance masks (Mask R-CNN); RetinaNet does without.
        key: config key named in errors.

    Raises:
        DatasetError: a listed image file is missing (the first few are named), or an annotation has a category
            that is not among ``category_ids``.
    """

    def __init__(
        self,
        images_dir: str | Path,
        coco: COCO,
        category_ids: list[int],
        transform: A.Compose,
        *,
        train: bool,
        filter_empty: bool = True,
        with_masks: bool = True,
        key: str = "data.train_images",
    ) -> None:
        self.images_dir = Path(images_dir)
        self.coco = coco
        self.transform = transform
        self.train = train
        self.with_masks = with_masks
        self.label_of = {c: i for i, c in enumerate(category_ids)}
        if not self.images_dir.is_dir():
            raise DatasetError(f"{key}: {self.images_dir} does not exist; {LAYOUT_HELP}")
        image_ids = sorted(coco.imgs)
        missing = [
            coco.imgs[i]["file_name"] for i in image_ids if not (self.images_dir / coco.imgs[i]["file_name"]).is_file()
        ]
        if missing:
            raise DatasetError(
                f"{key}: {len(missing)} image(s) named in the annotation json are missing from {self.images_dir}, "
                f"e.g. {', '.join(missing[:5])}"
            )
        unknown = sorted({a["category_id"] for a in coco.anns.values()} - set(self.label_of))
        if unknown:
            raise DatasetError(f"{key}: annotations use category ids {unknown[:5]} that the training json lacks")
        self.annotations: dict[int, list[dict]] = {}
        degenerate = 0
        for image_id in image_ids:
            anns = coco.imgToAnns.get(image_id, [])
            if train:
                info = coco.imgs[image_id]
                kept = []
                for ann in anns:
                    if ann.get("iscrowd", 0):
                        continue
                    box = _clip_xywh(ann["bbox"], info["width"], info["height"])
                    if box is None:
                        degenerate += 1
                        continue
                    kept.append({**ann, "box_xyxy": box})
                anns = kept
            self.annotations[image_id] = anns
        if train and filter_empty:
            image_ids = [i for i in image_ids if self.annotations[i]]
        self.image_ids = image_ids
        if degenerate:
            rank_zero_info(
                f"{key}: dropped {degenerate} degenerate box(es) (under 1 pixel wide or high, or outside the image)"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> dict:
        image_id = self.image_ids[i]
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        image = read_image(path)
        height, width = image.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            raise DatasetError(_size_mismatch(path, (height, width), (info["height"], info["width"])))
        anns = self.annotations[image_id]
        sample = {
            "image_id": image_id, "orig_size": torch.tensor([height, width]), "path": str(path),
            "file_name": info["file_name"],
        }  # fmt: skip
        if self.train:
            sample["image"], sample["target"] = self._train_sample(image, anns)
        else:
            sample["image"] = self.transform(image=image)["image"]
            sample["target"] = self._eval_target(anns, height, width)
        sample["target"]["image_id"] = image_id
        return sample

    def _masks(self, anns: list[dict], height: int, width: int) -> list[np.ndarray]:
        masks = []
        for ann in anns:
            mask = decode_segmentation(ann.get("segmentation"), height, width)
            if mask is None:  # no segmentation: the box, filled
                mask = np.zeros((height, width), np.uint8)
                x, y, w, h = ann["bbox"]
                y0, x0 = max(int(np.floor(y)), 0), max(int(np.floor(x)), 0)  # a negative start would select nothing
                mask[y0 : max(int(np.ceil(y + h)), 0), x0 : max(int(np.ceil(x + w)), 0)] = 1
            masks.append(mask)
        return masks

    def _train_sample(self, image: np.ndarray, anns: list[dict]) -> tuple[torch.Tensor, dict]:
        height, width = image.shape[:2]
        inputs = {
            "image": image,
            "bboxes": np.array([a["box_xyxy"] for a in anns], np.float32).reshape(-1, 4),
            "labels": [self.label_of[a["category_id"]] for a in anns],
            "indices": list(range(len(anns))),
        }
        if self.with_masks:
            inputs["masks"] = self._masks(anns, height, width) or [np.zeros((height, width), np.uint8)]
        out = self.transform(**inputs)
        boxes = torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        indices = [int(j) for j, k in zip(out["indices"], keep.tolist()) if k]
        target = {"boxes": boxes[keep], "labels": torch.as_tensor(out["labels"], dtype=torch.int64)[keep]}
        if self.with_masks:
            h, w = out["image"].shape[-2:]
            masks = [torch.as_tensor(np.asarray(out["masks"][j])) for j in indices]
            target["masks"] = torch.stack(masks).to(torch.uint8) if masks else torch.zeros(0, h, w, dtype=torch.uint8)
        return out["image"], target

    def _eval_target(self, anns: list[dict], height: int, width: int) -> dict:
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
        target = {
            "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1).float(),
            "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "area": torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns]),
        }
        if self.with_masks:
            masks = self._masks(anns, height, width)
            target["masks"] = (
                torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
            )
        return target


def _size_mismatch(path: Path, decoded: tuple[int, int], listed: tuple[int, int]) -> str:
    """The error for an image whose decoded (h, w) is not the json's, with the fix when EXIF rotation explains it."""
    message = (
        f"{path} is {decoded[0]}x{decoded[1]} pixels (height x width, EXIF orientation applied) but its annotation "
        f"json says {listed[0]}x{listed[1]}"
    )
    if decoded[::-1] == listed:
        with Image.open(path) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        if orientation != 1:
            message += (
                f"; the file's EXIF orientation {orientation} rotates it, so the json describes the stored, unrotated "
                "pixels: rotate the pixels and drop the tag (e.g. `exiftran -ai`, or PIL's ImageOps.exif_transpose), "
                "or annotate the image as it is displayed"
            )
    return message


def _clip_xywh(bbox: list[float], width: int, height: int) -> list[float] | None:
    """A json xywh box as xyxy clipped to the image; None for a box under 1 pixel wide or high (mmdet's rule, which
    also keeps sub-pixel boxes from collapsing in float32) or with nothing inside the image."""
    x, y, w, h = bbox
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return [x1, y1, x2, y2] if w >= 1 and h >= 1 and x2 > x1 and y2 > y1 else None


class _PredictDataset(ImagePathDataset):
    """Images under a folder for ``predict``; ``image_id`` is the index of the file in sorted order."""

    def __getitem__(self, i: int) -> dict:
        sample = super().__getitem__(i)
        keep = ("image", "path", "file_name")
        return {"image_id": i, "orig_size": sample["size"], **{k: sample[k] for k in keep}}


def collate_detection(samples: list[dict]) -> dict:
    """Per-image lists for ``image`` and ``target`` (sizes differ; the detector pads), tensors for the rest."""
    batch = {
        "image": [s["image"] for s in samples],
        "image_id": torch.tensor([s["image_id"] for s in samples], dtype=torch.int64),
        "orig_size": torch.stack([s["orig_size"] for s in samples]),
        "path": [s["path"] for s in samples],
        "file_name": [s["file_name"] for s in samples],
    }
    if "target" in samples[0]:
        batch["target"] = [s["target"] for s in samples]
    return batch


class COCODataModule(BaseDataModule):
    """COCO detection / instance segmentation, or a user's own COCO-format json and image folder.

    The training json's categories, sorted by id, define the contiguous labels ``0..K-1``: ``class_names`` (their
    names) and ``category_ids`` (their json ids) are stored in the checkpoint by the task, so predictions map back
    to the source ids without the dataset. Images listed in a json but missing on disk are reported in ``setup``.

    Args:
        root: dataset root of the standard layout.
        train_images: training image folder (default ``<root>/train2017``).
        train_ann: training json (default ``<root>/annotations/instances_train2017.json``).
        val_images: validation image folder (default ``<root>/val2017``).
        val_ann: validation json (default ``<root>/annotations/instances_val2017.json``).
        test_images: test image folder (default: the validation folder).
        test_ann: test json (default: the validation json).
        predict_root: an image or folder of images for ``predict``; unset predicts on the validation images (with
            their json image ids, so ``results.json`` can be scored against the validation json).
        train_scales: short-side sizes drawn per training image.
        max_size: the longest allowed side, in training and evaluation.
        val_scale: evaluation short side.
        hflip: horizontal flip probability in training.
        filter_empty: drop training images without (non-crowd) annotations; evaluation keeps every image.
        with_masks: decode instance masks (needed by Mask R-CNN; RetinaNet configs turn it off).
        batch_size: images per process and step.
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
        root: str = "data/coco",
        train_images: str | None = None,
        train_ann: str | None = None,
        val_images: str | None = None,
        val_ann: str | None = None,
        test_images: str | None = None,
        test_ann: str | None = None,
        predict_root: str | None = None,
        train_scales: list[int] = DEFAULT_TRAIN_SCALES,
        max_size: int = 1333,
        val_scale: int = 800,
        hflip: float = 0.5,
        filter_empty: bool = True,
        with_masks: bool = True,
        batch_size: int = 2,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        prefetch_factor: int | None = None,
        skip_bad_samples: bool = False,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        root = Path(root)
        ann = root / "annotations"
        self.paths = {
            "train": (Path(train_images or root / "train2017"), Path(train_ann or ann / "instances_train2017.json")),
            "val": (Path(val_images or root / "val2017"), Path(val_ann or ann / "instances_val2017.json")),
        }
        self.paths["test"] = (
            Path(test_images) if test_images else self.paths["val"][0],
            Path(test_ann) if test_ann else self.paths["val"][1],
        )
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch_factor = prefetch_factor
        self.skip_bad_samples = skip_bad_samples
        self._categories: list[dict] | None = None
        self.datasets: dict[str, Dataset] = {}

    def _key(self, split: str, what: str) -> str:
        return f"data.{split}_{what}"

    @property
    def categories(self) -> list[dict]:
        """The training json's categories sorted by id (read once); the validation json's when the training json
        is absent (evaluating a checkpoint elsewhere: the CLI checks they are the checkpoint's classes)."""
        if self._categories is None:
            split, path = "train", self.paths["train"][1]
            if not path.is_file() and self.paths["val"][1].is_file():
                split, path = "val", self.paths["val"][1]
                rank_zero_info(
                    f"categories from {path}: {self._key('train', 'ann')} {self.paths['train'][1]} is absent"
                )
            key = self._key(split, "ann")
            if not path.is_file():
                raise DatasetError(f"{key}: {path} does not exist; {LAYOUT_HELP}")
            try:
                categories = json.loads(path.read_text()).get("categories")
            except (OSError, ValueError) as err:
                raise DatasetError(f"{key}: cannot read {path} as json: {err}") from err
            if not categories:
                raise DatasetError(f"{key}: {path} has no categories")
            if not all(isinstance(c, dict) and "id" in c and "name" in c for c in categories):
                raise DatasetError(
                    f'{key}: {path}: category entries need an \'id\' and a \'name\', e.g. {{"id": 1, "name": "person"}}'
                )
            self._categories = sorted(categories, key=lambda c: c["id"])
        return self._categories

    @property
    def class_names(self) -> list[str]:
        """Category names in label order."""
        return [c["name"] for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        """The json category id of each contiguous label."""
        return [int(c["id"]) for c in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def train_transform(self) -> A.Compose:
        hp = self.hparams
        return detection_train_transform(hp.train_scales, hp.max_size, hflip=hp.hflip, mean=hp.mean, std=hp.std)

    def eval_transform(self) -> A.Compose:
        hp = self.hparams
        return detection_eval_transform(hp.val_scale, hp.max_size, mean=hp.mean, std=hp.std)

    def _dataset(self, split: str) -> COCODetectionDataset:
        images, ann = self.paths[split]
        train = split == "train"
        dataset = COCODetectionDataset(
            images,
            load_coco(ann, self._key(split, "ann")),
            self.category_ids,
            self.train_transform() if train else self.eval_transform(),
            train=train,
            filter_empty=self.hparams.filter_empty,
            with_masks=self.hparams.with_masks,
            key=self._key(split, "images"),
        )
        if not len(dataset):
            raise DatasetError(
                f"{self._key(split, 'ann')}: none of the {len(dataset.coco.imgs)} images of {ann} has a non-crowd "
                "annotation inside the image, and training keeps only those (data.filter_empty)"
            )
        rank_zero_info(f"{split}: {len(dataset)} images in {images} ({ann.name})")
        return dataset

    def setup(self, stage: str) -> None:
        if stage == "predict":
            root = self.hparams.predict_root
            self.datasets["predict"] = (
                _PredictDataset(root, self.eval_transform()) if root else self._dataset_or_reuse("val")
            )
            return
        for split in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}[stage]:
            self.datasets[split] = self._dataset_or_reuse(split)

    def _dataset_or_reuse(self, split: str) -> COCODetectionDataset:
        if split not in self.datasets:
            self.datasets[split] = self._dataset(split)
        return self.datasets[split]

    def collate_fn(self):
        return collate_detection


class DemoDetectionDataModule(COCODataModule):
    """:class:`COCODataModule` over the generated shapes detection set, written to ``root`` when first needed
    (not for ``predict`` on a ``predict_root``, which needs no dataset).

    Args:
        root: where the set lives, in the COCO layout (generated if missing).
        train_count: training images when generating.
        val_count: validation images when generating.
        image_size: side of the generated square images.
        **kwargs: any :class:`COCODataModule` argument.
    """

    def __init__(
        self,
        root: str = "data/demo/shapes_coco",
        train_count: int = 400,
        val_count: int = 100,
        image_size: int = 128,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)

    def _generate(self) -> None:
        from lightning_vit.datamodules.demo import make_shapes_detection

        hp = self.hparams
        make_shapes_detection(hp.root, train_count=hp.train_count, val_count=hp.val_count, image_size=hp.image_size)

    @property
    def categories(self) -> list[dict]:
        self._generate()
        return super().categories

    def setup(self, stage: str) -> None:
        if not (stage == "predict" and self.hparams.predict_root):
            self._generate()
        super().setup(stage)
