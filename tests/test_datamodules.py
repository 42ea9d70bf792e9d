"""Image decoding and the ImageNet-layout DataModule on tiny data written in the real formats."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lightning_vit.datamodules import DatasetError, DemoShapesDataModule, ImageNetDataModule, read_image
from lightning_vit.datamodules.demo import SHAPES


def _module(root: Path, **kwargs) -> ImageNetDataModule:
    defaults = dict(image_size=32, batch_size=4, num_workers=0, mixup=0.0, cutmix=0.0, auto_augment=None)
    return ImageNetDataModule(root=str(root), **{**defaults, **kwargs})


def test_read_image_converts_every_format_to_rgb(tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((5, 7), 77, np.uint8))
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.dstack([np.full((5, 7), v, np.uint8) for v in (10, 20, 30, 0)]))  # BGRA
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.full((5, 7, 3), 65535, np.uint16))
    for path, expected in ((gray, (77, 77, 77)), (rgba, (30, 20, 10)), (deep, (255, 255, 255))):
        image = read_image(path)
        assert image.shape == (5, 7, 3) and image.dtype == np.uint8
        assert tuple(image[0, 0]) == expected, path.name


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_read_image_names_the_unreadable_file(tmp_path: Path, content) -> None:
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        ok, data = cv2.imencode(".jpg", np.full((64, 64, 3), 90, np.uint8))
        content = data.tobytes()[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="bad.jpg"):
        read_image(path)


def test_read_image_accepts_trailing_data_and_finds_truncation_behind_a_thumbnail(tmp_path: Path) -> None:
    """Bytes after the end marker (a motion photo's video) are not truncation; a JPEG cut inside its image data is,
    even when an EXIF thumbnail in its header brings an end marker of its own; a PNG cut before IEND is."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (48, 64, 3), np.uint8)
    trailer = rng.integers(0, 256, 5000, np.uint8).tobytes().replace(b"\xff\xd9", b"\x00\x00")
    _, thumb = cv2.imencode(".jpg", pixels[:8, :8])
    _, jpeg = cv2.imencode(".jpg", pixels)
    jpeg, thumb = jpeg.tobytes(), thumb.tobytes()
    app1 = b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb  # a header segment holding a whole JPEG
    with_thumb = jpeg[:2] + app1 + jpeg[2:]
    _, png = cv2.imencode(".png", pixels)
    cases = {
        "motion.jpg": jpeg + trailer, "trailer.png": png.tobytes() + trailer, "thumb.jpg": with_thumb,
    }  # fmt: skip
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(read_image(tmp_path / name).shape, (48, 64, 3), err_msg=name)
    np.testing.assert_array_equal(read_image(tmp_path / "motion.jpg"), read_image(tmp_path / "thumb.jpg"))
    cut = {"cut_thumb.jpg": with_thumb[: len(with_thumb) - 200], "cut.png": png.tobytes()[:-30]}
    for name, data in cut.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DatasetError, match=f"{name}: the file is truncated"):
            read_image(tmp_path / name)


def test_datamodule_reads_the_imagenet_layout(image_folder: Path) -> None:
    dm = _module(image_folder)
    assert dm.class_names == ["circle", "square", "star"] and dm.num_classes == 3
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 13 and len(dm.datasets["val"]) == 7  # gray.png and rgba.png included
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].tolist() == [0, 0, 1, 1]
    # the class colour survives decoding and normalisation: circle images are red-dominant
    assert (batch["image"][0, 0, 16, 16] > batch["image"][0, 1, 16, 16]).item()


def test_mixup_makes_soft_targets_on_training_batches(image_folder: Path) -> None:
    dm = _module(image_folder, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = type("T", (), {"training": True})()
    batch = dm.on_after_batch_transfer(batch, 0)
    soft = batch["soft_label"]
    assert soft.shape == (4, 3)
    torch.testing.assert_close(soft.sum(1), torch.ones(4))
    assert soft.min() >= 0.1 / 3 - 1e-6  # label smoothing spreads 0.1 over the classes


def test_missing_root_says_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data\.root: .*nowhere/train does not exist.*demo"):
        _ = _module(tmp_path / "nowhere").class_names


def test_empty_class_folder_is_named(image_folder: Path) -> None:
    (image_folder / "train" / "empty").mkdir()
    dm = _module(image_folder)
    with pytest.raises(DatasetError, match=r"train/empty holds no images"):
        dm.setup("fit")


def test_val_class_unknown_to_train_is_an_error(image_folder: Path) -> None:
    (image_folder / "val" / "hexagon").mkdir()
    cv2.imwrite(str(image_folder / "val" / "hexagon" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match="hexagon"):
        _module(image_folder).setup("validate")


def test_corrupt_image_error_names_it(image_folder: Path) -> None:
    (image_folder / "val" / "star" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    dm = _module(image_folder)
    dm.setup("validate")
    with pytest.raises(DatasetError, match="broken.jpg"):
        list(dm.val_dataloader())


def test_odd_batch_with_mixup_is_refused(image_folder: Path) -> None:
    with pytest.raises(ValueError, match="data.batch_size"):
        _module(image_folder, batch_size=5, mixup=0.8)


def test_demo_dataset_is_generated_once_in_the_imagenet_layout(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    dm = DemoShapesDataModule(root=str(root), train_per_class=3, val_per_class=2, num_workers=0, image_size=32)
    assert dm.class_names == sorted(SHAPES)
    assert len(list((root / "train" / "star").glob("*.jpg"))) == 3
    first = (root / "val" / "ring" / "ring_0000.jpg").read_bytes()
    DemoShapesDataModule(root=str(root), train_per_class=50, num_workers=0)  # already there: not rewritten
    assert len(list((root / "train" / "star").glob("*.jpg"))) == 3
    assert (root / "val" / "ring" / "ring_0000.jpg").read_bytes() == first
