"""Faulty data on disk, each handled as data/README.md documents or stopped with an error naming the file or key.

Faults tested elsewhere: truncated / corrupt / zero-byte JPEG and PNG, grayscale, RGBA and 16-bit images
(test_datamodules); a mask value outside the classes and a mask whose size differs from its image
(test_segmentation); COCO images missing on disk, boxes outside the image, crowd annotations (test_detection);
misspelt and mistyped config keys (test_cli).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import CONFIGS
from PIL import Image
from test_cli import FAST

from lightning_vit.cli import main
from lightning_vit.datamodules import DatasetError, ImageNetDataModule, read_image
from lightning_vit.datamodules.ade20k import ADE20KDataModule, SegmentationFolderDataModule
from lightning_vit.datamodules.base import SeededDataset
from lightning_vit.datamodules.coco import EXIF_ORIENTATION, COCODataModule
from lightning_vit.tasks.detection import ObjectDetector


def _classification(root: Path, **kwargs) -> ImageNetDataModule:
    options = dict(image_size=32, batch_size=4, num_workers=0, mixup=0.0, cutmix=0.0, auto_augment=None)
    return ImageNetDataModule(root=str(root), **{**options, **kwargs})


def _save_jpeg(path: Path, rgb: np.ndarray, orientation: int = 1) -> Path:
    exif = Image.Exif()
    if orientation != 1:
        exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(rgb).save(path, quality=100, exif=exif)
    return path


def _coco(root: Path, images: list[dict], annotations: list[dict], **kwargs) -> COCODataModule:
    """A COCO-format json over ``root`` (one category, id 1) used for training and validation."""
    ann = root / "instances.json"
    categories = [{"id": 1, "name": "thing"}]
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    folders = dict(train_images=str(root), train_ann=str(ann), val_images=str(root), val_ann=str(ann))
    return COCODataModule(**folders, train_scales=[64], max_size=200, val_scale=64, num_workers=0, **kwargs)


# ---------------------------------------------------------------------------------------------------- decoding


def test_cmyk_jpeg_is_read_in_rgb(tmp_path: Path) -> None:
    image = Image.new("CMYK", (24, 16), (0, 255, 255, 0))  # red
    image.paste((255, 0, 0, 40), (12, 0, 24, 8))  # cyan, a little black
    image.paste((30, 60, 200, 10), (0, 8, 12, 16))
    image.save(tmp_path / "cmyk.jpg", quality=100)
    decoded = read_image(tmp_path / "cmyk.jpg")
    expected = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    assert decoded.shape == (16, 24, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - expected).max() <= 3
    assert np.abs(decoded[4, 4].astype(int) - (255, 0, 0)).max() <= 3  # not inverted (Adobe CMYK)


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1)])  # 6: 90 degrees clockwise, 8: anticlockwise
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, turns: int) -> None:
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:6, :6] = (255, 0, 0)
    path = _save_jpeg(tmp_path / "photo.jpg", stored, orientation)
    decoded = read_image(path)
    assert decoded.shape == (30, 20, 3)  # as displayed
    assert ((decoded[..., 0] > 128) == (np.rot90(stored, turns)[..., 0] > 128)).all()  # the red corner moved


def test_exif_rotated_image_meets_a_mask_drawn_as_displayed(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:6, :6] = (255, 0, 0)
    _save_jpeg(images / "photo.jpg", stored, orientation=6)
    displayed_mask = np.zeros((30, 20), np.uint8)
    displayed_mask[:6, -6:] = 1  # the red corner as the image is displayed: top right
    cv2.imwrite(str(masks / "photo.png"), displayed_mask)
    folders = dict(train_images=str(images), train_masks=str(masks), val_images=str(images), val_masks=str(masks))
    dm = SegmentationFolderDataModule(**folders, num_classes=2, num_workers=0)
    dm.setup("validate")
    image, mask = dm.datasets["val"].load(0)
    assert image.shape[:2] == mask.shape == (30, 20)
    assert (image[..., 0] > 128).tolist() == (mask == 1).tolist()

    cv2.imwrite(str(masks / "photo.png"), np.rot90(displayed_mask))  # a mask drawn on the stored pixels
    with pytest.raises(DatasetError, match=r"mask .*photo\.png is 30x20 but image .*photo\.jpg is 20x30"):
        dm.datasets["val"].load(0)


def test_coco_sizes_are_those_of_the_displayed_image(tmp_path: Path) -> None:
    stored = np.full((24, 40, 3), 90, np.uint8)
    _save_jpeg(tmp_path / "photo.jpg", stored, orientation=6)  # displayed 40 high, 24 wide
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2.0, 20.0, 10.0, 12.0], "area": 120.0, "iscrowd": 0}
    as_displayed = {"id": 1, "file_name": "photo.jpg", "height": 40, "width": 24}
    dm = _coco(tmp_path, [as_displayed], [box])
    dm.setup("validate")
    sample = dm.datasets["val"][0]
    assert sample["orig_size"].tolist() == [40, 24] and sample["image"].shape[-2:] == (107, 64)
    torch.testing.assert_close(sample["target"]["boxes"], torch.tensor([[2.0, 20.0, 12.0, 32.0]]))

    as_stored = {**as_displayed, "height": 24, "width": 40}
    dm = _coco(tmp_path, [as_stored], [box])
    dm.setup("validate")
    with pytest.raises(
        DatasetError, match=r"photo\.jpg is 40x24 pixels .* json says 24x40; the file's EXIF orientation 6 .*exiftran"
    ):
        dm.datasets["val"][0]


# ---------------------------------------------------------------------------------------------------- small images


def test_classification_crop_of_a_small_image_has_the_configured_size(tmp_path: Path) -> None:
    for split, name, i in [(s, n, i) for s in ("train", "val") for n in ("a", "b") for i in range(2)]:
        (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
        image = np.full((9, 12, 3), 40, np.uint8)
        image[:, :6] = 200
        cv2.imwrite(str(tmp_path / split / name / f"{i}.png"), image)
    dm = _classification(tmp_path, image_size=32, scale=(0.5, 1.0), re_prob=0.0, hflip=0.0)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        image = next(iter(loader))["image"]
        assert image.shape == (4, 3, 32, 32)
        assert (image[:, 0, :, 0] > image[:, 0, :, -1]).all()  # upscaled, not padded: the bright half is left


def test_segmentation_crop_pads_small_images_with_ignore_index(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(4):
        cv2.imwrite(str(images / f"{i}.jpg"), np.full((12, 16, 3), 120, np.uint8))
        cv2.imwrite(str(masks / f"{i}.png"), np.full((12, 16), i % 2, np.uint8))
    folders = dict(train_images=str(images), train_masks=str(masks), val_images=str(images), val_masks=str(masks))
    # rescaled by 2 x [0.5, 1.0]: at most 24 x 32, always below the 48 x 48 crop
    dm = SegmentationFolderDataModule(
        **folders, num_classes=2, crop_size=48, scale=(64, 24), ratio_range=(0.5, 1.0), batch_size=4, num_workers=0
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["mask"].shape == (4, 48, 48)
    assert (batch["mask"][:, 24:] == 255).all() and (batch["mask"][:, :, 32:] == 255).all()
    assert (batch["image"][:, :, 24:] == 0).all() and (batch["image"][:, :, :, 32:] == 0).all()
    assert (batch["mask"][:, :6, :8] != 255).all()  # the image itself sits top left


# ---------------------------------------------------------------------------------------------------- Mask R-CNN


def test_annotation_without_segmentation_trains_with_its_box_as_mask(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((32, 48, 3), 100, np.uint8))
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4.0, 6.0, 20.0, 10.0], "area": 200.0, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30.0, 16.0, 12.0, 12.0], "area": 144.0, "iscrowd": 0,
         "segmentation": []},
    ]  # fmt: skip
    dm = _coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "height": 32, "width": 48}], anns, hflip=1.0)
    dm.setup("fit")
    sample = dm.datasets["train"][0]
    image, target = sample["image"], sample["target"]
    assert image.shape == (3, 64, 96)  # short side 32 -> 64, then flipped
    # each box doubled and mirrored (x -> 96 - x), and its mask is that box filled
    torch.testing.assert_close(target["boxes"], torch.tensor([[48.0, 12.0, 88.0, 32.0], [12.0, 32.0, 36.0, 56.0]]))
    for box, mask in zip(target["boxes"].int().tolist(), target["masks"]):
        x1, y1, x2, y2 = box
        filled = torch.zeros(64, 96, dtype=torch.uint8)
        filled[y1:y2, x1:x2] = 1
        assert torch.equal(mask, filled)

    torch.manual_seed(0)
    detector = ObjectDetector(
        backbone="test_coat_lite", detector="mask_rcnn", num_classes=1, fpn_channels=32,
        detector_kwargs={"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                         "box_batch_size_per_image": 32},
    ).train()  # fmt: skip
    losses = detector([image], detector._training_targets([target]))
    assert torch.isfinite(losses["loss_mask"]) and losses["loss_mask"] > 0


# ---------------------------------------------------------------------------------------------------- empty sets


def test_empty_train_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match=r"data\.root: .*/train has no class sub-folders; expected layout"):
        _ = _classification(tmp_path).class_names


def test_ade20k_split_without_images_is_named(tmp_path: Path) -> None:
    base = tmp_path / "ADEChallengeData2016"
    for kind in ("images", "annotations"):
        for split in ("training", "validation"):
            (base / kind / split).mkdir(parents=True)
    dm = ADE20KDataModule(root=str(tmp_path), num_workers=0)
    with pytest.raises(DatasetError, match=r"data\.train_images: .*images/training holds no images"):
        dm.setup("fit")


def test_coco_json_without_images_is_named(tmp_path: Path) -> None:
    dm = _coco(tmp_path, [], [])
    with pytest.raises(DatasetError, match=r"data\.train_ann: .*instances\.json lists no images"):
        dm.setup("fit")
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    dm = _coco(tmp_path, [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8}], [])
    with pytest.raises(
        DatasetError, match=r"data\.train_ann: none of the 1 images of .*instances\.json has a non-crowd"
    ):
        dm.setup("fit")
    dm.setup("validate")  # evaluation keeps images without annotations
    assert len(dm.datasets["val"]) == 1


# ---------------------------------------------------------------------------------------------------- skip_bad_samples


def _add_bad_files(folder: Path, *names: str) -> list[str]:
    """Unreadable files in ``folder``: ``zero*`` empty, ``truncated*`` half a JPEG, others not an image at all."""
    _, data = cv2.imencode(".jpg", np.full((32, 32, 3), 90, np.uint8))
    for name in names:
        content = b"" if name.startswith("zero") else b"not an image"
        (folder / name).write_bytes(data.tobytes()[: len(data) // 2] if name.startswith("truncated") else content)
    return list(names)


def _epoch(loader) -> list[torch.Tensor]:
    return [batch["image"] for batch in loader]


def test_skip_bad_samples_replaces_them_deterministically(image_folder: Path) -> None:
    bad = _add_bad_files(image_folder / "train" / "star", "zero.jpg", "corrupt.jpg")  # 13 + 2 = 3 batches of 5
    cv2.GaussianBlur(np.zeros((512, 512, 3), np.uint8), (15, 15), 0)  # start OpenCV's pool before workers fork
    epochs = {}
    for workers in (0, 2):
        dm = _classification(
            image_folder, batch_size=5, auto_augment="rand-m9-mstd0.5-inc1", num_workers=workers,
            skip_bad_samples=True,
        )  # fmt: skip
        dm.setup("fit")
        loader = dm.train_dataloader()
        epochs[workers] = _epoch(loader)
        count, messages = dm.skipped["train"].pop()
        assert count == 2 and all(any(f"/{name}: " in m for m in messages) for name in bad)
        assert dm.skipped["train"].pop() == (0, [])  # popping resets
        _epoch(loader)  # another epoch, from the same persistent workers
        assert dm.skipped["train"].pop()[0] == 2
    assert len(epochs[0]) == 3 and all(b.shape == (5, 3, 32, 32) for b in epochs[0])
    for a, b in zip(epochs[0], epochs[2]):
        assert torch.equal(a, b)

    # the replacement is the next readable sample, augmented with the seed the skipped sample had
    dataset = dm.datasets["train"]
    order = list(loader.sampler)
    paths = [p.name for p, _ in dataset.samples]
    expected = []
    for index, seed in order:
        while paths[index] in bad:
            index = (index + 1) % len(dataset)
        expected.append(SeededDataset(dataset)[(index, seed)]["image"])
    assert torch.equal(torch.cat(epochs[0]), torch.stack(expected))


def test_skip_bad_samples_gives_up_on_a_set_of_unreadable_files(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        _add_bad_files(tmp_path / split / "a", "zero.jpg", "corrupt.png")
    dm = _classification(tmp_path, skip_bad_samples=True)
    dm.setup("validate")
    with pytest.raises(DatasetError, match=r"corrupt\.png: .* gave up: the 2 val samples from index 0 on are all"):
        _epoch(dm.val_dataloader())


def test_cli_fit_with_and_without_skip_bad_samples(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    train_bad = _add_bad_files(image_folder / "train" / "star", "zero.jpg", "corrupt.jpg", "truncated.jpg")
    val_bad = _add_bad_files(image_folder / "val" / "square", "zero.png")
    # every sample is read: 16 training images in 4 batches of 4, 8 validation images in 2
    args = [
        "fit", "--config", str(CONFIGS / "demo" / "coat_lite.yaml"), *FAST, f"--data.init_args.root={image_folder}",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=4",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last.startswith("error: cannot decode image ")
    assert any(f"/{name}: " in last for name in train_bad)

    for workers in (0, 2):  # with workers, the training loader Lightning starts and drops reads ahead: counted once
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lightning_vit"):
            main([*args, "--data.init_args.skip_bad_samples=true", f"--data.init_args.num_workers={workers}"])
        messages = [r.getMessage() for r in caplog.records]
        if not workers:  # each unreadable file is named as it is skipped, with the reason (by the worker that reads)
            for name in train_bad + val_bad:
                assert any(f"/{name}: " in m and "skipped (data.skip_bad_samples)" in m for m in messages), name
        reports = [m for m in messages if m.startswith("skipped ")]
        assert len(reports) == 2
        assert reports[0].startswith("skipped 1 unreadable sample(s) in val epoch 0: cannot decode image ")
        assert val_bad[0] in reports[0]
        assert reports[1].startswith("skipped 3 unreadable sample(s) in train epoch 0: ")
        assert all(name in reports[1] for name in train_bad)
        run = sorted((tmp_path / "runs" / "demo_coat_lite").glob("version_*"))[-1]
        with (run / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [float(r["train_skipped_samples"]) for r in rows if r.get("train_skipped_samples")] == [3.0]
        assert [float(r["val_skipped_samples"]) for r in rows if r.get("val_skipped_samples")] == [1.0]
