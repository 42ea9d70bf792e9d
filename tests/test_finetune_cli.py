"""One command fine-tunes each task from a project checkpoint: a classifier's backbone starts a segmenter and a
detector (frozen for their first epoch, so the weights they end with are exactly the ones they loaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import CONFIGS
from test_cli import FAST
from test_detection import FAST as DETECTION_FAST
from test_segmentation import FAST as SEGMENTATION_FAST

from lightning_vit.cli import main


def _last(root: Path, name: str) -> dict:
    return torch.load(root / "runs" / name / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)


def _backbone(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def test_segmenter_and_detector_fine_tune_from_a_classifier(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONFIGS / "demo" / "coat_lite.yaml"), *FAST, f"--data.init_args.root={image_folder}",
          "--trainer.max_epochs=1"])  # fmt: skip
    source = tmp_path / "runs" / "demo_coat_lite" / "version_0" / "checkpoints" / "last.ckpt"
    classifier = _backbone(_last(tmp_path, "demo_coat_lite")["state_dict"], "backbone.")
    finetune = [f"--model.init_args.pretrained={source}", "--model.init_args.freeze_backbone_epochs=1"]

    main([
        "fit", "--config", str(CONFIGS / "demo" / "upernet_coat_lite.yaml"), *SEGMENTATION_FAST, *finetune,
        f"--data.init_args.root={tmp_path / 'shapes'}", "--data.init_args.num_train=4", "--data.init_args.num_val=2",
        "--data.init_args.image_size=[40,56]", "--trainer.max_epochs=1",
    ])  # fmt: skip
    segmenter = _last(tmp_path, "demo_upernet_coat_lite")["state_dict"]
    dense = _backbone(segmenter, "backbone.")
    assert dense and dense.keys() <= classifier.keys()  # the dense form: no classification norm or head
    assert all(torch.equal(v, classifier[k]) for k, v in dense.items())
    assert any(k.startswith("decode_head.") for k in segmenter)

    main([
        "fit", "--config", str(CONFIGS / "demo" / "mask_rcnn_coat_lite.yaml"), *DETECTION_FAST, *finetune,
        f"--data.init_args.root={tmp_path / 'coco'}", "--data.init_args.train_count=6", "--data.init_args.val_count=2",
        "--data.init_args.image_size=64", "--trainer.max_epochs=1",
    ])  # fmt: skip
    detector = _backbone(_last(tmp_path, "demo_mask_rcnn_coat_lite")["state_dict"], "detector.backbone.body.")
    assert detector and detector.keys() <= classifier.keys()
    assert all(torch.equal(v, classifier[k]) for k, v in detector.items())
