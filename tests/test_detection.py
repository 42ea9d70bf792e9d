"""Detection and instance segmentation: detectors on every test backbone, COCO data, metrics vs COCOeval, CLI."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lightning_vit.backbones import list_backbones
from lightning_vit.callbacks.writers.detection import to_coco_results
from lightning_vit.cli import main
from lightning_vit.datamodules import DatasetError
from lightning_vit.datamodules.coco import COCODataModule, decode_segmentation
from lightning_vit.datamodules.demo import make_shapes_detection
from lightning_vit.tasks.detection import METRIC_KEYS, ObjectDetector

for _family in ("swin", "scalable_vit", "patchconvnet"):  # register whichever families exist
    with contextlib.suppress(ImportError):
        importlib.import_module(f"lightning_vit.backbones.{_family}")

CATEGORY_IDS = (3, 7, 11, 13, 20, 40)
TINY_DETECTOR = {
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 20,
    "box_batch_size_per_image": 32,
}


def _tiny_detector(backbone: str, detector: str, **kwargs) -> ObjectDetector:
    extra = TINY_DETECTOR if detector == "mask_rcnn" else {}
    return ObjectDetector(
        backbone=backbone, detector=detector, num_classes=3, fpn_channels=32, detections_per_img=5,
        detector_kwargs=extra, **kwargs,
    )  # fmt: skip


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": counts}


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """Generated shapes in the COCO layout (non-contiguous category ids), plus hand-made edge cases:

    train: a crowd annotation and a box outside the image (degenerate) on image 1, an annotation without
    segmentation and one with uncompressed RLE on image 2; val: a crowd annotation on image 1.
    """
    root = make_shapes_detection(
        tmp_path / "coco", train_count=6, val_count=4, image_size=64, max_shapes=3, category_ids=CATEGORY_IDS, seed=1
    )
    ann_dir = root / "annotations"
    for split in ("train2017", "val2017"):
        data = json.loads((ann_dir / f"instances_{split}.json").read_text())
        next_id = max(a["id"] for a in data["annotations"]) + 1
        data["annotations"].append({
            "id": next_id, "image_id": 1, "category_id": 7, "bbox": [2.0, 2.0, 20.0, 12.0], "area": 240.0,
            "iscrowd": 1, "segmentation": [[2, 2, 22, 2, 22, 14, 2, 14]],
        })  # fmt: skip
        if split == "train2017":
            data["annotations"].append({
                "id": next_id + 1, "image_id": 1, "category_id": 3, "bbox": [70.0, 10.0, 5.0, 5.0], "area": 25.0,
                "iscrowd": 0, "segmentation": [],
            })  # fmt: skip
            box_mask = np.zeros((64, 64), np.uint8)
            box_mask[40:50, 30:46] = 1
            data["annotations"] += [
                {"id": next_id + 2, "image_id": 2, "category_id": 40, "bbox": [30.0, 40.0, 16.0, 10.0],
                 "area": 160.0, "iscrowd": 0},
                {"id": next_id + 3, "image_id": 2, "category_id": 20, "bbox": [30.0, 40.0, 16.0, 10.0],
                 "area": 160.0, "iscrowd": 0, "segmentation": _uncompressed_rle(box_mask)},
            ]  # fmt: skip
        (ann_dir / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _datamodule(root: Path, **kwargs) -> COCODataModule:
    options = dict(train_scales=[48, 64, 80], max_size=100, val_scale=64, batch_size=2, num_workers=0)
    return COCODataModule(str(root), **{**options, **kwargs})


# ---------------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn"])
@pytest.mark.parametrize("backbone", list_backbones("test_*"))
def test_detector_loss_backward(backbone: str, detector: str) -> None:
    torch.manual_seed(0)
    model = _tiny_detector(backbone, detector).train()
    images = [torch.randn(3, 64, 96), torch.randn(3, 80, 64)]
    masks = torch.zeros(2, 64, 96, dtype=torch.uint8)
    masks[0, 5:30, 5:40], masks[1, 30:60, 50:90] = 1, 1
    targets = [
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0], [50.0, 30.0, 90.0, 60.0]]), "labels": torch.tensor([0, 2]),
         "masks": masks},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "masks": torch.zeros(0, 80, 64, dtype=torch.uint8)},
    ]  # fmt: skip
    losses = model(images, model._training_targets(targets))
    expected = {"classification", "bbox_regression"} if detector == "retinanet" else {
        "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}  # fmt: skip
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    if detector == "mask_rcnn":
        assert not no_grad
    else:  # RetinaNet reads strides 8-32: only modules feeding the stride-4 map alone may go without gradient
        assert all(n.startswith("detector.backbone.") and "fpn" not in n for n in no_grad), sorted(no_grad)[:5]
        assert any(p.grad is not None for p in model.backbone.parameters())


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn"])
def test_predictions_are_rescaled_to_the_original_image(detector: str, monkeypatch) -> None:
    """Detections in the padded input frame come back in the original image's pixels, labels in 0..K-1."""
    model = _tiny_detector("test_coat_lite", detector).eval()
    raw = {"boxes": torch.tensor([[8.0, 4.0, 24.0, 20.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    if detector == "mask_rcnn":
        raw["masks"] = torch.ones(1, 1, 28, 28)
        raw["labels"] = raw["labels"] + 1  # torchvision's Mask R-CNN labels count the background
    monkeypatch.setattr(model, "forward", lambda images, targets=None: [dict(raw)])
    batch = {"image": [torch.zeros(3, 32, 48)], "orig_size": torch.tensor([[64, 120]])}
    (pred,) = model.predict_batch(batch)
    torch.testing.assert_close(pred["boxes"], torch.tensor([[20.0, 8.0, 60.0, 40.0]]))
    assert pred["labels"].tolist() == [1]
    if detector == "mask_rcnn":
        assert pred["masks"].shape == (1, 64, 120)
        ys, xs = torch.nonzero(pred["masks"][0], as_tuple=True)
        found = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        torch.testing.assert_close(found, pred["boxes"][0], atol=1.0, rtol=0)  # torchvision pads the 28x28 mask


# ---------------------------------------------------------------------------------------------------- data


def test_datamodule_categories_crowd_degenerate_and_masks(coco_root: Path, caplog) -> None:
    dm = _datamodule(coco_root)
    assert dm.category_ids == list(CATEGORY_IDS)
    assert dm.class_names == ["circle", "square", "triangle", "star", "cross", "ring"]
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert "dropped 1 degenerate box" in caplog.text
    train, val = dm.datasets["train"], dm.datasets["val"]
    coco = train.coco

    # training: crowd and degenerate annotations gone, labels map back to the json's category ids
    first = train[train.image_ids.index(1)]["target"]
    kept = [a for a in coco.imgToAnns[1] if not a["iscrowd"] and a["bbox"][0] < 64]
    assert len(first["boxes"]) == len(kept) == len(coco.imgToAnns[1]) - 2
    assert sorted(dm.category_ids[i] for i in first["labels"]) == sorted(a["category_id"] for a in kept)

    # every training mask lies in its (augmented) box, and images follow the multi-scale rule
    for i in range(len(train)):
        sample = train[i]
        h, w = sample["image"].shape[-2:]
        assert min(h, w) in (48, 64, 80) and max(h, w) <= 100
        target = sample["target"]
        assert target["masks"].shape == (len(target["boxes"]), h, w)
        for box, mask in zip(target["boxes"], target["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert len(xs), "an instance lost its mask"
            found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            torch.testing.assert_close(found, box, atol=2.5, rtol=0)

    # evaluation keeps the json as it is, crowd included
    crowd = val[val.image_ids.index(1)]["target"]
    assert crowd["iscrowd"].tolist().count(1) == 1 and len(crowd["boxes"]) == len(val.coco.imgToAnns[1])

    # image 2: the annotation without segmentation gets its box filled; uncompressed RLE decodes to the same box
    filled, rle = [a for a in coco.imgToAnns[2] if a["bbox"] == [30, 40, 16, 10]]
    assert decode_segmentation(filled.get("segmentation"), 64, 64) is None
    box_mask = train._masks([filled], 64, 64)[0]
    np.testing.assert_array_equal(box_mask, decode_segmentation(rle["segmentation"], 64, 64))
    assert box_mask.sum() == 160 and box_mask[40:50, 30:46].all()
    assert len(train[train.image_ids.index(2)]["target"]["boxes"]) == len(coco.imgToAnns[2])

    # polygons and compressed RLE (rings) from the generator: decoded areas are the json areas
    kinds = {type(a["segmentation"]).__name__ for a in coco.anns.values() if a.get("segmentation")}
    assert kinds == {"list", "dict"}
    for ann in val.coco.anns.values():
        if isinstance(ann["segmentation"], dict):
            assert decode_segmentation(ann["segmentation"], 64, 64).sum() == ann["area"]
        elif not ann["iscrowd"]:
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(decode_segmentation(ann["segmentation"], 64, 64))
            found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            np.testing.assert_allclose(found, [x, y, x + w, y + h], atol=2)  # polygons trace pixel centres


def test_annotation_edge_cases_train_and_bad_entries_name_the_json(tmp_path: Path, caplog) -> None:
    """A box without segmentation that starts left of / above the image fills its inside part; a polygon part of
    under 3 points is dropped (the box is filled when none is left); a sub-pixel box is dropped like mmdet does,
    where it crashed albumentations; entries lacking fields or RLE masks of another size name the json."""
    (tmp_path / "img").mkdir()
    cv2 = pytest.importorskip("cv2")
    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), np.full((40, 60, 3), 120, np.uint8))
    anns = [
        {"bbox": [-5.0, 10.0, 20.0, 10.0]},
        {"bbox": [50.0, -4.0, 20.0, 10.0], "segmentation": [[50, 0, 60, 0]]},
        {"bbox": [5.0, 5.0, 10.0, 10.0], "segmentation": [[1, 1, 2, 2], [5, 5, 15, 5, 15, 15, 5, 15]]},
        {"bbox": [20.3, 7.1, 1e-7, 4.0]},
    ]
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 3, "iscrowd": 0, **a} for i, a in enumerate(anns)],
        "categories": [{"id": 3, "name": "c"}],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    paths = dict(train_images=str(tmp_path / "img"), val_images=str(tmp_path / "img"), train_ann=str(ann))
    dm = COCODataModule(**paths, val_ann=str(ann), train_scales=[40], max_size=60, val_scale=40, num_workers=0)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert "dropped 1 degenerate box" in caplog.text
    target = dm.datasets["train"][0]["target"]  # areas, sorted: a flip may move the masks, not their areas
    assert sorted(target["masks"].flatten(1).sum(1).tolist()) == [60, 100, 150]
    val = dm.datasets["val"][0]["target"]
    assert val["masks"].flatten(1).sum(1).tolist() == [150, 60, 100, 5]  # the json as it is: 1 x 5 pixels filled

    bad = {
        "no_size": ({"images": [{"id": 1, "file_name": "a.jpg"}]}, r'"images" entry 0 lacks \[.width., .height.\]'),
        "no_bbox": ({"annotations": [{"id": 1, "image_id": 1, "category_id": 3}]}, r'"annotations" entry 0 lacks'),
        "rle": (
            {"annotations": [{**data["annotations"][0], "segmentation": {"size": [60, 40], "counts": "abc"}}]},
            r"annotation 1 has an RLE mask of size \[60, 40\] but its image 1 is \[40, 60\]",
        ),
    }
    for name, (change, message) in bad.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(DatasetError, match=rf"data\.train_ann: .*{name}\.json: {message}"):
            COCODataModule(**{**paths, "train_ann": str(tmp_path / f"{name}.json")}, num_workers=0).setup("fit")
    (tmp_path / "no_name.json").write_text(json.dumps({**data, "categories": [{"id": 3}]}))
    with pytest.raises(DatasetError, match=r"no_name\.json: category entries need an .id. and a .name."):
        _ = COCODataModule(**{**paths, "train_ann": str(tmp_path / "no_name.json")}).class_names


def test_filter_empty_and_missing_images(coco_root: Path) -> None:
    dm = _datamodule(coco_root, filter_empty=False)
    dm.setup("fit")
    coco = dm.datasets["train"].coco
    with_objects = [i for i in coco.imgs if any(not a["iscrowd"] for a in coco.imgToAnns.get(i, []))]
    assert len(dm.datasets["train"]) == len(coco.imgs) > len(with_objects)
    filtered = _datamodule(coco_root)
    filtered.setup("fit")
    assert sorted(filtered.datasets["train"].image_ids) == sorted(with_objects)
    assert len(filtered.datasets["val"]) == 4  # evaluation keeps every image

    (coco_root / "val2017" / "000002.jpg").unlink()
    with pytest.raises(DatasetError, match=r"data\.val_images: 1 image\(s\) .* missing .* 000002\.jpg"):
        _datamodule(coco_root).setup("validate")
    # without the training json (evaluating a checkpoint elsewhere) the categories come from the validation json
    elsewhere = _datamodule(coco_root, train_ann=str(coco_root / "nowhere.json"))
    assert elsewhere.class_names == filtered.class_names and elsewhere.category_ids == list(CATEGORY_IDS)
    with pytest.raises(DatasetError, match=r"data\.train_ann: .*nowhere\.json does not exist"):
        _ = _datamodule(
            coco_root, train_ann=str(coco_root / "nowhere.json"), val_ann=str(coco_root / "no.json")
        ).class_names


# ---------------------------------------------------------------------------------------------------- metrics


def _fake_predictions(target: dict, rng: np.random.Generator) -> dict:
    """Noisy copies of the non-crowd objects (some with wrong labels), plus false positives."""
    keep = target["iscrowd"] == 0
    boxes, labels, masks = target["boxes"][keep], target["labels"][keep], target["masks"][keep].bool()
    h, w = masks.shape[-2:] if masks.ndim == 3 else (64, 64)
    shift = torch.from_numpy(rng.integers(-3, 4, (len(boxes), 4))).float()
    boxes = (boxes + shift).clamp(0, 64)
    labels = torch.where(torch.from_numpy(rng.random(len(labels)) < 0.2), (labels + 1) % 6, labels)
    masks = torch.roll(masks, shifts=int(rng.integers(-2, 3)), dims=-1)
    extra = int(rng.integers(0, 4))
    corners = torch.from_numpy(rng.uniform(0, 40, (extra, 2))).float()
    boxes = torch.cat([boxes, torch.cat([corners, corners + 8 + 16 * torch.rand(extra, 2)], 1)])
    labels = torch.cat([labels, torch.from_numpy(rng.integers(0, 6, extra))])
    extra_masks = torch.zeros(extra, h, w, dtype=torch.bool)
    for m, (x1, y1, x2, y2) in zip(extra_masks, boxes[-extra:].round().int().tolist() if extra else []):
        m[y1:y2, x1:x2] = True
    scores = torch.from_numpy(rng.uniform(0.05, 1.0, len(boxes))).float()
    return {"boxes": boxes, "labels": labels, "scores": scores, "masks": torch.cat([masks, extra_masks])}


def _cocoeval(gt: COCO, results: list[dict], iou_type: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def test_metric_equals_cocoeval_on_the_results_json(coco_root: Path, monkeypatch) -> None:
    """The task's val_map / val_segm_map equal pycocotools' COCOeval on the results json the writer produces."""
    dm = _datamodule(coco_root, batch_size=3)
    dm.setup("validate")
    model = ObjectDetector(backbone="test_coat_lite", detector="mask_rcnn", class_names=dm.class_names,
                           category_ids=dm.category_ids, fpn_channels=32)  # fmt: skip
    rng = np.random.default_rng(0)
    results, logged = [], {}
    monkeypatch.setattr(model, "log_dict", lambda values, **_: logged.update(values))
    for batch in dm.val_dataloader():
        preds = [_fake_predictions(t, rng) for t in batch["target"]]
        monkeypatch.setattr(model, "predict_batch", lambda b, preds=preds: preds)
        model.validation_step(batch, 0)
        for pred, image_id in zip(preds, batch["image_id"].tolist()):
            results += to_coco_results({**pred, "image_id": image_id}, model.category_ids)
    model.on_validation_epoch_end()
    gt = dm.datasets["val"].coco
    # the writer's json is what COCOeval reads; COCO stats order: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100
    for prefix, iou_type in (("", "bbox"), ("segm_", "segm")):
        stats = _cocoeval(gt, json.loads(json.dumps(results)), iou_type)
        ours = [float(logged[f"val_{prefix}{k}"]) for k in METRIC_KEYS]
        np.testing.assert_allclose(ours, stats[:9], atol=1e-6)
        assert 0.05 < stats[0] < 0.95  # neither trivial nor perfect, so the comparison means something


def test_metric_counts_an_image_once_across_processes(monkeypatch) -> None:
    """Under DDP a DistributedSampler pads with repeated images; the gathered metric keeps each image once."""
    from lightning_vit.tasks import detection

    def sample(image_id: int, shift: float) -> tuple[dict, dict]:
        box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
        return ({"boxes": box + shift, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])},
                {"boxes": box, "labels": torch.tensor([0]), "image_id": image_id})  # fmt: skip

    data = [sample(1, 0.0), sample(2, 6.0), sample(3, 12.0)]
    single = detection.COCOMeanAveragePrecision(iou_type="bbox")
    for p, t in data:
        single.update([p], [t])
    rank0, rank1 = (detection.COCOMeanAveragePrecision(iou_type="bbox") for _ in range(2))
    for p, t in (data[0], data[2]):
        rank0.update([p], [t])
    for p, t in (data[1], data[0]):  # image 1 again: the sampler's padding
        rank1.update([p], [t])
    states = [{n: list(getattr(m, n)) for n in m._defaults} for m in (rank0, rank1)]
    monkeypatch.setattr(detection.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(detection.dist, "all_gather_object", lambda out, obj, group=None: out.__setitem__(
        slice(None), states))  # fmt: skip
    rank0._sync_dist()
    assert sorted(rank0.image_ids) == [1, 2, 3]
    expected, got = single.compute(), rank0.compute()
    for key in METRIC_KEYS:
        assert float(got[key]) == pytest.approx(float(expected[key]), abs=1e-9)
    naive = detection.COCOMeanAveragePrecision(iou_type="bbox")
    for p, t in (data[0], data[2], data[1], data[0]):
        naive.update([p], [t])
    assert float(naive.compute()["map"]) != pytest.approx(float(expected["map"]), abs=1e-3)  # the duplicate matters


# ---------------------------------------------------------------------------------------------------- CLI


FAST = [
    "--model.init_args.backbone=test_coat_lite",
    "--model.init_args.fpn_channels=32",
    "--model.init_args.pretrained=null",
    "--model.init_args.detections_per_img=10",
    f"--model.init_args.detector_kwargs={json.dumps(TINY_DETECTOR)}",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.num_workers=0",
    "--data.init_args.train_scales=[48, 64]",
    "--data.init_args.max_size=96",
    "--data.init_args.val_scale=64",
    "--data.init_args.batch_size=2",
]


def test_cli_fit_validate_predict(coco_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "demo" / "mask_rcnn_coat_lite.yaml")
    data = [f"--data.init_args.root={coco_root}"]
    main(["fit", "--config", config, *FAST, *data, "--trainer.max_epochs=1"])
    run = tmp_path / "runs" / "demo_mask_rcnn_coat_lite" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["category_ids"] == list(CATEGORY_IDS)
    assert ckpt["hyper_parameters"]["class_names"][-1] == "ring"
    assert len(list((run / "checkpoints").glob("best-*.ckpt"))) == 1
    metrics = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val_map", "val_map_50", "val_segm_map", "train_loss"} <= set(metrics)

    main(["validate", "--config", config, *FAST, *data, f"--ckpt_path={last}"])

    out = tmp_path / "preds"
    main([
        "predict", "--config", config, *FAST, *data, f"--ckpt_path={last}", f"--prediction_writer.output={out}",
        "--prediction_writer.save_visuals=true", "--model.init_args.score_thresh=0.0",
    ])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    gt = COCO(str(coco_root / "annotations" / "instances_val2017.json"))
    predicted = {r["category_id"] for r in results}
    assert len(predicted) > 1 and predicted <= set(CATEGORY_IDS)  # the checkpoint's ids, not a default 1..K
    assert {r["image_id"] for r in results} <= set(gt.getImgIds())
    loaded = gt.loadRes(str(out / "results.json"))
    assert len(loaded.anns) == len(results)
    assert all(0 <= r["bbox"][0] and r["bbox"][0] + r["bbox"][2] <= 64.01 for r in results)
    assert mask_utils.decode(results[0]["segmentation"]).shape == (64, 64)
    assert sorted(p.name for p in (out / "visuals").iterdir()) == sorted(i["file_name"] for i in gt.imgs.values())

    folder = tmp_path / "folder_preds"  # a folder of images without a json: ids are the sorted files' indices
    (coco_root / "val2017" / "sub").mkdir()  # file names are paths under the folder: this one is told apart
    shutil.copy(coco_root / "val2017" / "000001.jpg", coco_root / "val2017" / "sub" / "000001.jpg")
    main([
        "predict", "--config", config, *FAST, f"--data.init_args.root={tmp_path / 'absent'}", f"--ckpt_path={last}",
        f"--data.init_args.predict_root={coco_root / 'val2017'}", f"--prediction_writer.output={folder}",
    ])  # fmt: skip
    results = json.loads((folder / "results.json").read_text())
    names = sorted(p.relative_to(coco_root / "val2017").as_posix() for p in (coco_root / "val2017").rglob("*.jpg"))
    assert results and all(names[r["image_id"]] == r["file_name"] for r in results)
    assert "sub/000001.jpg" in {r["file_name"] for r in results}
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS) and not (folder / "visuals").exists()
    assert not (tmp_path / "absent").exists()  # predicting from a checkpoint generates no demo data


DETECTION_CONFIGS = sorted((CONFIGS / "coco").glob("*.yaml")) + [CONFIGS / "demo" / "mask_rcnn_coat_lite.yaml"]


@pytest.mark.parametrize("path", DETECTION_CONFIGS, ids=lambda p: p.name)
def test_detection_configs_parse(path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    assert model["optimizer"]["init_args"]["lr"] == pytest.approx(1e-4 if "coco" in str(path) else 3e-4)
    if "coco" in str(path):
        assert model["scheduler"] == "step" and model["milestones"] == [8, 11] and model["warmup_steps"] == 500
        assert printed["trainer"]["max_epochs"] == 12 and printed["data"]["init_args"]["batch_size"] == 2
        assert model["detector"] == path.name.split("_")[0].replace("mask", "mask_rcnn")


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted((CONFIGS / "coco").glob("*.yaml")), ids=lambda p: p.name)
def test_coco_recipes_run_on_tiny_data(path: Path, coco_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    tiny = {"swin": "test_swin", "coat": "test_coat_lite", "scalable": "test_scalable_vit"}
    backbone = next(v for k, v in tiny.items() if k in path.name)
    main([
        "fit", "--config", str(path), *FAST, f"--model.init_args.backbone={backbone}",
        f"--data.init_args.root={coco_root}", "--trainer.fast_dev_run=1",
    ])  # fmt: skip
