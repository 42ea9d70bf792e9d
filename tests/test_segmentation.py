"""Semantic segmentation: heads on every test backbone, the metric against numpy, the data pipeline on tiny
ADE20K-layout data, sliding-window inference, and the CLI end to end (fit -> validate -> predict)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import CONFIGS
from PIL import Image

from lightning_vit.backbones import list_backbones
from lightning_vit.cli import main
from lightning_vit.datamodules._io import DatasetError
from lightning_vit.datamodules.ade20k import (
    ADE20K_CLASSES,
    ADE20KDataModule,
    CatMaxRatioCrop,
    RescaleToFit,
    SegmentationFolderDataModule,
    pad_collate,
    read_mask,
)
from lightning_vit.necks.fpn import FPN
from lightning_vit.tasks.segmentation import SegmentationMetrics, SemanticSegmenter, slide_inference

for _family in ("swin", "scalable_vit", "patchconvnet"):  # register whichever families exist
    try:
        __import__(f"lightning_vit.backbones.{_family}")
    except ImportError:
        pass

TEST_BACKBONES = list_backbones("test_*")


def write_ade20k(root: Path, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (40, 56)) -> Path:
    """Tiny ADE20K layout: stored labels 0 (other), 1, 2, 3 in bands; images coloured by label."""
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split, n in (("training", n_train), ("validation", n_val)):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            mask = np.zeros(size, np.uint8)
            mask[:, : size[1] // 3] = 1
            mask[:, size[1] // 3 : 2 * size[1] // 3] = 2
            mask[:, 2 * size[1] // 3 :] = 3
            mask[:4] = 0
            image = (mask[..., None] * 60 + rng.integers(0, 20, (*size, 3))).astype(np.uint8)
            name = f"ADE_{split}_{i:08d}"
            cv2.imwrite(str(base / "images" / split / f"{name}.jpg"), image)
            cv2.imwrite(str(base / "annotations" / split / f"{name}.png"), mask)
    return root


def _task(backbone: str, head: str, **kwargs) -> SemanticSegmenter:
    return SemanticSegmenter(
        backbone=backbone, num_classes=5, head=head, head_channels=16, fpn_channels=16, aux_channels=8, **kwargs
    )


@pytest.mark.parametrize("head", ["upernet", "fpn"])
@pytest.mark.parametrize("backbone", TEST_BACKBONES)
def test_heads_on_every_backbone(backbone: str, head: str) -> None:
    torch.manual_seed(0)
    model = _task(backbone, head)
    image, mask = torch.randn(2, 3, 64, 96), torch.randint(0, 5, (2, 64, 96))
    mask[:, :8] = 255
    feats = model.features(image)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    if backbone.startswith("test_patchconvnet"):
        assert model.pyramid is not None
    assert model(image).shape == (2, 5, 64, 96)
    assert (model.aux_head is not None) == (head == "upernet")
    loss = model.training_step({"image": image, "mask": mask}, 0)
    loss.backward()
    assert torch.isfinite(loss)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head_params if p.ndim > 1)


def test_upernet_layout_and_loss_weights() -> None:
    """UperNet's PPM scales and widths as mmseg defines them; the auxiliary loss enters with weight 0.4."""
    model = _task("test_coat_lite", "upernet").eval()
    head = model.decode_head
    assert [branch[0].output_size for branch in head.ppm] == [1, 2, 3, 6]
    assert head.fpn_bottleneck[0].in_channels == 4 * 16 and head.classifier[0].p == 0.1
    assert model.aux_head.convs[0][0].in_channels == model.backbone.feature_info[2]["num_chs"]
    model.train()
    image, mask = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    logged = {}
    model.log = lambda name, value, **_: logged.__setitem__(name, value.detach())
    torch.manual_seed(1)
    total = model.training_step({"image": image, "mask": mask}, 0)
    torch.testing.assert_close(total.detach(), logged["train_decode_loss"] + 0.4 * logged["train_aux_loss"])


def test_fpn_neck_top_down() -> None:
    """The coarser lateral, upsampled by nearest neighbour, is added into the finer one before the output conv."""
    fpn = FPN([2, 3], out_channels=4, strides=[4, 8], extra_levels=1)
    feats = [torch.randn(1, 2, 8, 8), torch.randn(1, 3, 4, 4)]
    outs = fpn(feats)
    assert [o.shape[-1] for o in outs] == [8, 4, 2] and [i["reduction"] for i in fpn.feature_info] == [4, 8, 16]
    top = fpn.lateral_convs[1](feats[1])
    fine = fpn.lateral_convs[0](feats[0]) + top.repeat_interleave(2, -1).repeat_interleave(2, -2)
    torch.testing.assert_close(outs[0], fpn.fpn_convs[0](fine))


def _numpy_scores(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int = 255) -> dict[str, float]:
    valid = gt != ignore
    p, g = pred[valid], gt[valid]
    iou, acc = [], []
    for c in range(num_classes):
        inter = np.sum((p == c) & (g == c))
        union = np.sum((p == c) | (g == c))
        if union > 0:
            iou.append(inter / union)
        if np.sum(g == c) > 0:
            acc.append(inter / np.sum(g == c))
    return {"mIoU": np.mean(iou), "mAcc": np.mean(acc), "aAcc": np.mean(p == g)}


def test_metric_equals_numpy_over_the_whole_set() -> None:
    rng = np.random.default_rng(0)
    num_classes = 6
    preds = [rng.integers(0, 5, (2, 9, 11)) for _ in range(3)]  # class 5 is never predicted ...
    gts = [rng.integers(0, 4, (2, 9, 11)) for _ in range(3)]  # ... nor labelled: excluded; class 4 only predicted
    for g in gts:
        g[rng.random(g.shape) < 0.2] = 255
    gts[0][0] = 0  # one image of a single class: per-batch averaging would differ from the set's confusion matrix
    metric = SegmentationMetrics(num_classes)
    for p, g in zip(preds, gts):
        metric.update(torch.from_numpy(p), torch.from_numpy(g))
    scores = {k: v.item() for k, v in metric.compute().items()}
    expected = _numpy_scores(np.concatenate(preds), np.concatenate(gts), num_classes)
    assert scores == pytest.approx(expected, abs=1e-6)
    per_class = metric.per_class()
    assert torch.isnan(per_class["IoU"][5]) and per_class["IoU"][4] == 0 and torch.isnan(per_class["Acc"][4])
    # per-batch means of the same predictions are not the set's mIoU (the state is not averaged per batch)
    batch_means = np.mean([_numpy_scores(p, g, num_classes)["mIoU"] for p, g in zip(preds, gts)])
    assert abs(batch_means - scores["mIoU"]) > 1e-3


def test_metric_is_correct_when_the_set_is_split_across_processes() -> None:
    """Two ranks' states merged as DDP's sync does (sum) give the metric of the whole set, not a mean of ranks."""
    rng = np.random.default_rng(1)
    preds, gts = rng.integers(0, 4, (2, 3, 8, 8)), rng.integers(0, 4, (2, 3, 8, 8))
    gts[0, :, :, :4] = 2  # rank 0 sees mostly class 2: its own mIoU differs from the whole set's
    ranks = [SegmentationMetrics(4) for _ in range(2)]
    for metric, p, g in zip(ranks, preds, gts):
        metric.update(torch.from_numpy(p), torch.from_numpy(g))
    assert (
        ranks[0]
        ._reductions["confmat"](torch.stack([ranks[0].confmat, ranks[1].confmat]))
        .equal(ranks[0].confmat + ranks[1].confmat)
    )
    rank_mean = np.mean([m.per_class()["IoU"].nanmean().item() for m in ranks])
    ranks[0].merge_state(ranks[1])
    whole = _numpy_scores(preds.reshape(-1, 8, 8), gts.reshape(-1, 8, 8), 4)
    assert ranks[0].compute()["mIoU"].item() == pytest.approx(whole["mIoU"], abs=1e-6)
    assert abs(rank_mean - whole["mIoU"]) > 1e-3
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        ranks[0].update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 4))


def test_slide_equals_whole_when_the_window_covers_the_image() -> None:
    torch.manual_seed(0)
    model = _task("test_coat_lite", "upernet").eval()
    image = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        whole = model(image)
        torch.testing.assert_close(slide_inference(model, image, 5, crop=(64, 96), stride=(32, 64)), whole)
        model.hparams.inference = "slide"
        model.hparams.slide_crop, model.hparams.slide_stride = 96, 64
        torch.testing.assert_close(model.inference_logits(image), whole)
    # overlapping windows: every pixel is the mean of the windows covering it
    calls = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape[-2:]))
        return torch.ones(x.shape[0], 2, *x.shape[-2:])

    out = slide_inference(probe, torch.zeros(1, 3, 50, 70), 2, crop=32, stride=20)
    assert calls == [(32, 32)] * 6 and torch.allclose(out, torch.ones_like(out))


def test_rescale_and_cat_max_ratio_crop() -> None:
    image, mask = np.zeros((100, 300, 3), np.uint8), np.zeros((100, 300), np.uint8)
    out = RescaleToFit((2048, 512))(image=image, mask=mask)
    assert out["image"].shape[:2] == (512, 1536) and out["mask"].shape == (512, 1536)  # short side bound
    out = RescaleToFit((2048, 512))(image=np.zeros((100, 1000, 3), np.uint8), mask=np.zeros((100, 1000), np.uint8))
    assert out["image"].shape[:2] == (205, 2048) and out["mask"].shape == (205, 2048)  # long side bound
    out = RescaleToFit((400, 50), ratio_range=(2.0, 2.0))(image=image, mask=mask)
    assert out["image"].shape[:2] == (100, 300)  # ratio 2 of (400, 50): min(800 / 300, 100 / 100)
    # class 1 fills a 20x20 corner of 40x40: a 20x20 crop is balanced (no class >= 75%) for 35% of the offsets,
    # so a plain crop is balanced about 35% of the time and one with 10 retries about 99% of the time
    mask = np.zeros((40, 40), np.uint8)
    mask[:20, :20] = 1
    image = np.zeros((40, 40, 3), np.uint8)

    def balanced(transform: CatMaxRatioCrop) -> int:
        transform.set_random_seed(0)
        crops = [transform(image=image, mask=mask)["mask"] for _ in range(100)]
        assert all(m.shape == (20, 20) for m in crops)
        return sum(0.25 < (m == 1).mean() < 0.75 for m in crops)

    assert balanced(CatMaxRatioCrop((20, 20), cat_max_ratio=0.75)) >= 90
    assert balanced(CatMaxRatioCrop((20, 20), cat_max_ratio=1.0)) <= 55


def test_ade20k_datamodule_reduce_zero_label_and_padding(tmp_path: Path) -> None:
    write_ade20k(tmp_path)
    assert len(ADE20K_CLASSES) == 150 and ADE20K_CLASSES[0] == "wall" and ADE20K_CLASSES[-1] == "flag"
    dm = ADE20KDataModule(root=str(tmp_path), crop_size=48, scale=(256, 64), num_workers=0, batch_size=2)
    assert dm.num_classes == 150
    dm.setup("fit")
    image, mask = dm.datasets["val"].load(0)
    assert set(np.unique(mask)) == {255, 0, 1, 2}  # stored 0 -> ignore, 1..3 -> 0..2
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, 64, 90) and val["valid_size"].tolist() == [[64, 90]]  # fit into (256, 64)
    # evaluation labels stay at the file's size (mmseg): the task resizes the logits to them
    assert val["size"].tolist() == [[40, 56]] and torch.equal(val["mask"][0], torch.as_tensor(mask))
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (2, 3, 48, 48) and train["mask"].dtype == torch.long
    # a rescale below the crop is padded: image 0 after normalisation, mask 255
    small = ADE20KDataModule(
        root=str(tmp_path), crop_size=64, scale=(56, 40), ratio_range=(0.5, 0.5), photometric=False, num_workers=0
    )
    small.setup("fit")
    sample = small.datasets["train"][0]
    assert (sample["mask"][20:] == 255).all() and (sample["image"][:, 20:] == 0).all()
    assert (sample["mask"][:20, :28] != 255).any()


def test_pad_collate() -> None:
    batch = pad_collate(
        [
            {"image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.long), "path": "a"},
            {"image": torch.ones(3, 6, 3), "mask": torch.zeros(6, 3, dtype=torch.long), "path": "b"},
        ]
    )
    assert batch["image"].shape == (2, 3, 6, 5) and batch["path"] == ["a", "b"]
    assert batch["valid_size"].tolist() == [[4, 5], [6, 3]]
    assert batch["image"][0, :, 4:].sum() == 0 and (batch["mask"][1, :, 3:] == 255).all()


def test_predict_step_returns_masks_at_the_original_sizes() -> None:
    """A padded prediction batch: each image's valid region is resized back to its own original (h, w)."""
    model = _task("test_coat_lite", "upernet").eval()
    samples = [
        {"image": torch.randn(3, 40, 48), "size": torch.tensor([80, 96]), "path": "a.jpg"},
        {"image": torch.randn(3, 32, 64), "size": torch.tensor([17, 34]), "path": "b.jpg"},
    ]
    with torch.no_grad():
        out = model.predict_step(pad_collate(samples), 0)
        alone = model.predict_step(pad_collate(samples[1:]), 0)
    assert [tuple(m.shape) for m in out["mask"]] == [(80, 96), (17, 34)] and out["path"] == ["a.jpg", "b.jpg"]
    assert tuple(alone["mask"][0].shape) == (17, 34) and alone["mask"][0].max() < 5


def test_evaluation_scores_at_each_label_maps_own_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """mmseg's protocol on a padded batch of two: each image's valid logits are resized (bilinear) to its label
    map's size, and the confusion counts are taken there (hand computation); the padding never counts."""
    model = _task("test_coat_lite", "upernet").eval()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 8, 10, generator=g)
    monkeypatch.setattr(model, "inference_logits", lambda images: logits)
    masks = [torch.randint(0, 5, (13, 21), generator=g), torch.randint(0, 5, (9, 6), generator=g)]
    masks[1][0] = 255
    valid = [(8, 10), (6, 4)]
    samples = [{"image": torch.zeros(3, *v), "mask": m, "size": torch.tensor(m.shape)} for v, m in zip(valid, masks)]
    batch = pad_collate(samples)
    assert batch["mask"].shape == (2, 13, 21) and batch["image"].shape == (2, 3, 8, 10)
    model.val_metrics.reset()
    with torch.no_grad():
        model._evaluate(batch, model.val_metrics, "val_")
    confusion = torch.zeros(5, 5)
    for i, ((vh, vw), mask) in enumerate(zip(valid, masks)):
        scaled = F.interpolate(logits[i : i + 1, :, :vh, :vw], size=mask.shape, mode="bilinear", align_corners=False)
        pred, keep = scaled[0].argmax(0), mask != 255
        confusion.index_put_((mask[keep], pred[keep]), torch.ones(int(keep.sum())), accumulate=True)
    scores = model.val_metrics.compute()
    iou = confusion.diag() / (confusion.sum(0) + confusion.sum(1) - confusion.diag())
    torch.testing.assert_close(scores["mIoU"], iou.mean())
    torch.testing.assert_close(scores["aAcc"], confusion.diag().sum() / confusion.sum())


def _folder_data(tmp_path: Path) -> dict[str, str]:
    write_ade20k(tmp_path / "ade", n_train=2, n_val=1)
    base = tmp_path / "ade" / "ADEChallengeData2016"
    return {
        "train_images": str(base / "images" / "training"),
        "train_masks": str(base / "annotations" / "training"),
        "val_images": str(base / "images" / "validation"),
        "val_masks": str(base / "annotations" / "validation"),
    }


@pytest.mark.parametrize("ignore_index", [-1, -100])
def test_negative_ignore_index_survives_loading(tmp_path: Path, ignore_index: int) -> None:
    """PyTorch's convention (-100, or -1): the ignored pixels keep the value (they wrapped around in uint8)."""
    folders = _folder_data(tmp_path)
    dm = SegmentationFolderDataModule(
        **folders, num_classes=3, reduce_zero_label=True, ignore_index=ignore_index, num_workers=0
    )
    dm.setup("fit")
    stored = read_mask(sorted(Path(folders["train_masks"]).iterdir())[0])
    _, mask = dm.datasets["train"].load(0)
    np.testing.assert_array_equal(mask, np.where(stored == 0, ignore_index, stored - 1))
    assert (mask == ignore_index).any() and mask.min() == ignore_index


def test_folder_datamodule_errors_name_the_files(tmp_path: Path) -> None:
    folders = _folder_data(tmp_path)
    masks = Path(folders["train_masks"])
    dm = SegmentationFolderDataModule(**folders, num_classes=3, num_workers=0, crop_size=32, scale=(128, 32))
    dm.setup("fit")
    bad = masks / "ADE_training_00000001.png"
    # stored values 0..3 are not all below 3 classes without reduce_zero_label
    with pytest.raises(DatasetError, match=r"ADE_training_00000001\.png holds values \[3\] outside the 3 classes"):
        dm.datasets["train"][1]
    dm = SegmentationFolderDataModule(**folders, num_classes=3, reduce_zero_label=True, num_workers=0)
    dm.setup("fit")
    cv2.imwrite(str(bad), np.full((40, 56), 9, np.uint8))
    with pytest.raises(DatasetError, match=r"ADE_training_00000001\.png holds values \[9\] outside the 3 classes"):
        dm.datasets["train"].load(1)
    cv2.imwrite(str(bad), np.ones((30, 56), np.uint8))
    with pytest.raises(
        DatasetError,
        match=r"mask .*ADE_training_00000001\.png is 56x30 but image .*ADE_training_00000001\.jpg is 56x40",
    ):
        dm.datasets["train"].load(1)
    bad.unlink()
    with pytest.raises(DatasetError, match=r"image .*ADE_training_00000001\.jpg has no mask"):
        dm.setup("fit")
    with pytest.raises(DatasetError, match="data.root: .*ADEChallengeData2016 does not exist"):
        ADE20KDataModule(root=str(tmp_path / "missing"), num_workers=0).setup("fit")


def test_palette_masks_are_read_as_indices(tmp_path: Path) -> None:
    folders = _folder_data(tmp_path)
    mask = np.array(Image.open(Path(folders["val_masks"]) / "ADE_validation_00000000.png"))
    palette_png = Image.fromarray(mask)
    palette_png.putpalette([255, 0, 0] * 256)  # every index the same colour: only the indices tell classes apart
    palette_png.save(Path(folders["val_masks"]) / "ADE_validation_00000000.png")
    dm = SegmentationFolderDataModule(**folders, num_classes=3, reduce_zero_label=True, num_workers=0)
    dm.setup("validate")
    assert set(np.unique(dm.datasets["val"].load(0)[1])) == {255, 0, 1, 2}


FAST = [
    "--model.init_args.backbone=test_coat_lite",
    "--model.init_args.head_channels=16",
    "--model.init_args.aux_channels=8",
    "--model.init_args.pretrained=null",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.precision=32",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.num_workers=0",
    "--data.init_args.crop_size=32",
    "--data.init_args.scale=[128,40]",
    "--data.init_args.batch_size=2",
    "--data.init_args.val_batch_size=2",
]


def demo_data(root: Path, num_val: int = 3) -> list[str]:
    """CLI options of the segmentation demo's DataModule for a tiny generated set under ``root``."""
    return [
        f"--data.init_args.root={root}", "--data.init_args.num_train=4", f"--data.init_args.num_val={num_val}",
        "--data.init_args.image_size=[40,56]",
    ]  # fmt: skip


def test_cli_fit_validate_predict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "demo" / "upernet_coat_lite.yaml")
    data = demo_data(tmp_path / "shapes")
    main(["fit", "--config", config, *FAST, *data, "--trainer.max_epochs=1"])
    run = tmp_path / "runs" / "demo_upernet_coat_lite" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["class_names"] == [
        "background",
        "circle",
        "square",
        "triangle",
        "star",
        "cross",
        "ring",
    ]
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val_mIoU") for r in rows) and any(r.get("train_loss") for r in rows)
    assert all(0 <= float(r["val_aAcc"]) <= 1 for r in rows if r.get("val_aAcc"))

    main(["validate", "--config", config, *FAST, *data, f"--ckpt_path={last}"])

    images = tmp_path / "to_predict"
    images.mkdir()
    rng = np.random.default_rng(0)
    # a sub-folder's image of a name taken above it gets its own mask (sub-folders are mirrored); a linked folder is
    # followed; hidden folders (a notebook's checkpoints) are not predicted
    sizes = {"wide": (37, 61), "tall": (52, 33), "cam/wide": (30, 45), "linked/tall": (52, 33)}
    for folder in (images / "cam", images / ".ipynb_checkpoints", tmp_path / "elsewhere"):
        folder.mkdir()
    (images / "linked").symlink_to(tmp_path / "elsewhere")
    (images / ".ipynb_checkpoints" / "skipped.jpg").write_bytes(b"")  # unreadable: reading it would stop the run
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(images / f"{name}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    out = tmp_path / "preds"
    main([
        "predict", "--config", config, *FAST, f"--data.init_args.root={tmp_path / 'shapes'}",
        f"--data.init_args.predict_root={images}", f"--ckpt_path={last}", f"--prediction_writer.output={out}",
        "--prediction_writer.save_visuals=true",
    ])  # fmt: skip
    model = SemanticSegmenter.load_from_checkpoint(last, map_location="cpu").eval()
    dm = ADE20KDataModule(root=str(tmp_path / "shapes"), scale=(128, 40), num_workers=0)
    transform = dm._predict_transform()
    for name, (h, w) in sizes.items():
        written = Image.open(out / "masks" / f"{name}.png")
        assert written.mode == "P" and written.size == (w, h)
        rgb = cv2.cvtColor(cv2.imread(str(images / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
        with torch.no_grad():
            logits = model(transform(image=rgb)["image"][None])
            expected = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear").argmax(1)[0]
        np.testing.assert_array_equal(np.asarray(written), expected.numpy())
        assert cv2.imread(str(out / "visuals" / f"{name}.png")).shape == (h, w, 3)
    assert sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png")) == sorted(
        f"{name}.png" for name in sizes
    )


SEG_CONFIGS = sorted((CONFIGS / "ade20k").glob("*.yaml")) + [CONFIGS / "demo" / "upernet_coat_lite.yaml"]
TINY = {
    "swin": "test_swin",
    "scalable_vit": "test_scalable_vit",
    "coat_lite": "test_coat_lite",
    "patchconvnet": "test_patchconvnet",
}


@pytest.mark.parametrize("path", SEG_CONFIGS, ids=lambda p: p.name)
def test_segmentation_configs_parse_with_the_recipes(path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    model, data, trainer = config["model"]["init_args"], config["data"]["init_args"], config["trainer"]
    assert model["backbone"] in list_backbones(), f"{path.name}: backbone {model['backbone']} is not registered"
    assert model["scheduler"] == "poly"
    callbacks = [c["init_args"] for c in trainer["callbacks"] if c["class_path"].endswith("AtomicModelCheckpoint")]
    assert {c.get("monitor") for c in callbacks} == {"val_mIoU", None} and any(
        c["filename"] == "last" for c in callbacks
    )
    assert {lg["init_args"]["save_dir"] for lg in trainer["logger"]} == {"runs"}
    if path.parent.name == "demo":
        return
    optim = model["optimizer"]["init_args"]
    assert data["crop_size"] == 512 and data["batch_size"] == 2 and data["scale"] == [2048, 512]
    if model["head"] == "upernet":
        assert (optim["lr"], optim["weight_decay"], trainer["max_steps"]) == (6e-5, 0.01, 160000)
        assert (model["warmup_steps"], model["poly_power"], model["aux_weight"]) == (1500, 1.0, 0.4)
    else:
        assert (optim["lr"], optim["weight_decay"], trainer["max_steps"]) == (1e-4, 1e-4, 80000)
    if "swin" in path.name:
        assert model["backbone_kwargs"]["drop_path_rate"] == 0.3


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            p, marks=() if p.name in ("upernet_swin_tiny.yaml", "fpn_scalable_vit_small.yaml") else pytest.mark.slow
        )
        for p in sorted((CONFIGS / "ade20k").glob("*.yaml"))
    ],
    ids=lambda p: p.name,
)
def test_ade20k_recipes_run_on_tiny_data(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each recipe (its head, schedule, checkpointing, every-N-steps validation) runs on tiny ADE20K-layout data."""
    monkeypatch.chdir(tmp_path)
    write_ade20k(tmp_path / "ade", n_train=4, n_val=2)
    family = next(k for k in TINY if path.stem.split("_", 1)[1].startswith(k))
    main([
        "fit", "--config", str(path), *FAST, f"--model.init_args.backbone={TINY[family]}",
        "--model.init_args.pretrained=null", "--trainer.strategy=auto", "--trainer.sync_batchnorm=false",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", f"--data.init_args.root={tmp_path / 'ade'}",
    ])  # fmt: skip
    run = next((tmp_path / "runs").iterdir()) / "version_0"
    # validated at step 2; last.ckpt is written every 2000 steps
    (best,) = (run / "checkpoints").glob("best-step=000002-*.ckpt")
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and len(ckpt["hyper_parameters"]["class_names"]) == 150
    with (run / "metrics.csv").open() as f:
        assert any(r.get("val_mIoU") for r in csv.DictReader(f))
