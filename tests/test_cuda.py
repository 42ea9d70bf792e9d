"""CUDA: backbones, mixed precision (16-mixed with its GradScaler, bf16-mixed) and every task end to end on a GPU.

Skipped where no GPU is present (CI has none). Run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS
from test_cli import FAST as CLS_FAST
from test_detection import FAST as DET_FAST
from test_detection import coco_root  # noqa: F401  (fixture)
from test_segmentation import FAST as SEG_FAST
from test_segmentation import demo_data

from lightning_vit import benchmark
from lightning_vit.backbones import create_backbone, list_backbones
from lightning_vit.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = list_backbones("test_*")


def _on_gpu(args: list[str], precision: str) -> list[str]:
    swapped = {"--trainer.accelerator=cpu": "--trainer.accelerator=gpu", "--trainer.precision=32": ""}
    return [a for a in (swapped.get(arg, arg) for arg in args) if a] + [f"--trainer.precision={precision}"]


@pytest.mark.parametrize("name", TINY)
def test_backbone_on_cuda_matches_cpu_and_trains_under_autocast(name: str) -> None:
    """fp32 on the GPU equals the CPU (SDPA's CUDA kernels, masks and caches on the device); fp16 and bf16
    autocast stay close to fp32 and give finite gradients for every parameter."""
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        model.cuda()
        got = model(x.cuda())
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)
    model.train()
    for dtype in (torch.float16, torch.bfloat16):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            out = model(x.cuda())
        out.float().square().mean().backward()
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
            model.eval()
            close = model(x.cuda()).float()
            model.train()
        torch.testing.assert_close(close.cpu(), expected, atol=0.1, rtol=0.1)
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_classification_fit_on_gpu_and_validate_equals_cpu(
    precision: str, image_folder: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "demo" / "coat_lite.yaml")
    data = [f"--data.init_args.root={image_folder}"]
    main(["fit", "--config", config, *_on_gpu(CLS_FAST, precision), *data, "--trainer.max_epochs=2"])
    last = tmp_path / "runs" / "demo_coat_lite" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["state_dict"].values())
    if precision == "16-mixed":  # Lightning's GradScaler state travels with the checkpoint
        assert state["MixedPrecision"]["scale"] > 0
    metrics = {}
    for device, precision_now in (("gpu", "32"), ("cpu", "32")):
        args = [a.replace("accelerator=cpu", f"accelerator={device}") for a in CLS_FAST]
        cli = main(
            [
                "validate",
                "--config",
                config,
                *args,
                *data,
                f"--trainer.precision={precision_now}",
                f"--ckpt_path={last}",
            ]
        )
        metrics[device] = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert metrics["gpu"]["val_acc1"] == metrics["cpu"]["val_acc1"]
    assert metrics["gpu"]["val_loss"] == pytest.approx(metrics["cpu"]["val_loss"], abs=1e-3)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_segmentation_fit_on_gpu(precision: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "demo" / "upernet_coat_lite.yaml")
    data = demo_data(tmp_path / "shapes")
    cli = main(["fit", "--config", config, *_on_gpu(SEG_FAST, precision), *data, "--trainer.max_epochs=1"])
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train_loss"]) and 0 <= float(metrics["val_mIoU"]) <= 1


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_detection_fit_and_predict_on_gpu(precision: str, coco_root: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "demo" / "mask_rcnn_coat_lite.yaml")
    args = [*_on_gpu(DET_FAST, precision), f"--data.init_args.root={coco_root}"]
    cli = main(["fit", "--config", config, *args, "--trainer.max_epochs=1"])
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])
    last = tmp_path / "runs" / "demo_mask_rcnn_coat_lite" / "version_0" / "checkpoints" / "last.ckpt"
    out = tmp_path / "preds"
    main(["predict", "--config", config, *args, f"--ckpt_path={last}", f"--prediction_writer.output={out}",
          "--model.init_args.score_thresh=0.0"])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results and all(len(r["bbox"]) == 4 for r in results)


def test_benchmark_on_cuda_every_precision(capsys) -> None:
    argv = ["--backbone", "test_swin", "--image_size", "64", "--batch_size", "4", "--warmup", "1", "--repeats", "2"]
    rows = benchmark.main([*argv, "--device", "cuda", "--precision", "fp32", "bf16", "fp16"])
    assert {(r["mode"], r["precision"]) for r in rows} == {
        (m, p) for m in ("infer", "train") for p in ("fp32", "bf16", "fp16")
    }
    assert all(r["img_s"] > 0 and r["step_peak_mb"] > 0 for r in rows)  # what the step itself allocated on the GPU
    train = {r["precision"]: r for r in rows if r["mode"] == "train"}
    assert train["bf16"]["saved_mb"] < train["fp32"]["saved_mb"]  # 2-byte activations, weight copies left out
    out = capsys.readouterr().out
    assert "device cuda" in out and "gpu " in out
