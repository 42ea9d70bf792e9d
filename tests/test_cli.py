"""The command line end to end on tiny data: fit -> validate -> test -> predict, resume, configs, bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS

from lightning_vit.cli import _message, main
from lightning_vit.datamodules import DatasetError

FAST = [
    "--model.init_args.backbone=test_coat_lite",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--data.init_args.num_workers=0",
    "--data.init_args.image_size=32",
    "--data.init_args.batch_size=4",
]


def _run(*args: str) -> None:
    main([*args])


def test_fit_validate_test_predict(image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "demo" / "coat_lite.yaml")
    data = [f"--data.init_args.root={image_folder}"]
    _run("fit", "--config", config, *FAST, *data, "--trainer.max_epochs=2")

    run = tmp_path / "runs" / "demo_coat_lite" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    last = run / "checkpoints" / "last.ckpt"
    best = [p for p in (run / "checkpoints").glob("best-*.ckpt")]
    assert last.is_file() and len(best) == 1
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["class_names"] == ["circle", "square", "star"]
    assert ckpt["epoch"] == 1
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val_acc1") for r in rows) and any(r.get("train_loss") for r in rows)
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["model"]["init_args"]["class_names"] == ["circle", "square", "star"]

    _run("validate", "--config", config, *FAST, *data, f"--ckpt_path={last}")
    _run("test", "--config", config, *FAST, *data, f"--ckpt_path={last}")

    out = tmp_path / "preds" / "scores.csv"
    predict_root = image_folder / "val"
    _run(
        "predict", "--config", config, *FAST, f"--data.init_args.root={tmp_path / 'absent'}",
        f"--data.init_args.predict_root={predict_root}", f"--ckpt_path={last}", f"--prediction_writer.output={out}",
        "--prediction_writer.top_k=2",
    )  # fmt: skip
    with out.open() as f:
        rows = list(csv.DictReader(f))
    images = sorted(str(p) for p in predict_root.rglob("*") if p.is_file())
    assert sorted(r["path"] for r in rows) == images
    for r in rows:
        assert r["top1_class"] in {"circle", "square", "star"} and r["top2_class"] != r["top1_class"]
        assert 1.0 >= float(r["top1_prob"]) >= float(r["top2_prob"]) >= 0.0

    # the checkpoint alone (no config, another directory, the dataset gone) gives the same predictions
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    alone = elsewhere / "alone.csv"
    _run(
        "predict", f"--ckpt_path={last}", f"--data.init_args.predict_root={predict_root}",
        f"--prediction_writer.output={alone}", "--prediction_writer.top_k=2", "--trainer.enable_progress_bar=false",
    )  # fmt: skip
    with alone.open() as f:  # fp32 here, bf16-mixed from the config above
        alone_rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    assert len(alone_rows) == len(rows)
    for a, b in zip(alone_rows, sorted(rows, key=lambda r: r["path"])):
        assert a["path"] == b["path"] and a["top1_class"] == b["top1_class"]
        assert abs(float(a["top1_prob"]) - float(b["top1_prob"])) < 1e-2
    assert not (elsewhere / "data").exists()
    with pytest.raises(SystemExit) as exit_info:
        _run("predict", f"--ckpt_path={tmp_path / 'nope.ckpt'}", f"--data.init_args.predict_root={predict_root}")
    assert exit_info.value.code == 2


def test_resume_last_continues_the_same_run(image_folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "demo" / "coat_lite.yaml")
    data = [f"--data.init_args.root={image_folder}"]
    _run("fit", "--config", config, *FAST, *data, "--trainer.max_epochs=1")
    _run("fit", "--config", config, *FAST, *data, "--trainer.max_epochs=2", "--ckpt_path=last")
    runs = sorted(p.name for p in (tmp_path / "runs" / "demo_coat_lite").iterdir())
    assert runs == ["last.ckpt", "version_0"]  # the demo's fixed-path copy is overwritten, not versioned
    last = tmp_path / "runs/demo_coat_lite/version_0/checkpoints/last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 4

    # resuming on data of other classes: one line pointing to fine-tuning (was a tensor-size traceback)
    other = tmp_path / "other"
    shutil.copytree(image_folder, other)
    for split in ("train", "val"):
        shutil.rmtree(other / split / "star")
    with pytest.raises(SystemExit) as exit_info:
        _run("fit", "--config", config, *FAST, f"--data.init_args.root={other}", f"--ckpt_path={last}")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: ckpt_path: {last} holds a model of 3 classes (circle, square, star) but DemoShapesDataModule gives 2 "
        f"(circle, square); --ckpt_path continues that model on its own classes: to fine-tune it on this data, pass "
        f"--model.init_args.pretrained {last} instead"
    )


def test_bad_input_is_one_clear_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "coat_lite.yaml")
    with pytest.raises(SystemExit) as exit_info:
        _run("fit", "--config", config, f"--data.init_args.root={tmp_path / 'missing'}")
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert err[-1].startswith("error: data.root:") and "missing/train does not exist" in err[-1]
    assert "configs/demo/coat_lite.yaml" in err[-1]

    with pytest.raises(SystemExit):
        _run("fit", "--config", config, "--model.init_args.lr_bach_size=3")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (
        "error: model.init_args.lr_bach_size: not an option of lightning_vit.tasks.ImageClassifier "
        "(did you mean 'lr_batch_size'?)"
    )

    with pytest.raises(SystemExit):
        _run("fit", "--config", config, "--data.init_args.batch_size=many")
    assert "Expected a <class 'int'>" in capsys.readouterr().err

    # option values and checkpoint files the parser cannot judge: one line too, naming the key or file
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    cases = {
        ("fit", "--ckpt_path=notes.ckpt"): "error: ckpt_path: notes.ckpt is not a readable PyTorch checkpoint (",
        ("validate", "--ckpt_path=gone.ckpt"): "error: ckpt_path: gone.ckpt is not a file",
        ("fit", "--model.init_args.backbone=coat_lite_tinyy"): (
            "error: model.init_args.backbone: unknown backbone 'coat_lite_tinyy'; did you mean 'coat_lite_tiny'"
        ),
        ("fit", "--model.init_args.scheduler=cosinee"): "error: model.init_args.scheduler must be one of",
        ("fit", "--model.init_args.layer_decay=1.5"): "error: model.init_args.layer_decay must be in (0, 1]",
    }
    for (command, option), expected in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            _run(command, "--config", str(CONFIGS / "demo" / "coat_lite.yaml"), option)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and err[-1].startswith(expected), (option, err[-3:])
        assert not any(line.startswith("Traceback") for line in err), option

    # the segmentation demo starts from the classification demo's checkpoint; without it, one line says so
    with pytest.raises(SystemExit) as exit_info:
        _run("fit", "--config", str(CONFIGS / "demo" / "upernet_coat_lite.yaml"), "--trainer.max_epochs=1")
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1] == (
        f"error: pretrained: runs/demo_coat_lite/last.ckpt is not a file (expected a "
        f".pth/.pt/.bin/.safetensors/.ckpt, looked in {tmp_path})"
    )


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses(path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run("fit", "--config", str(path), "--print_config")
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("lightning_vit.tasks.")
    assert printed["data"]["class_path"].startswith("lightning_vit.datamodules.")


RECIPES = {
    "coat_lite.yaml": "test_coat_lite",
    "coat.yaml": "test_coat",
    "swin.yaml": "test_swin",
    "patchconvnet.yaml": "test_patchconvnet",
    "scalable_vit.yaml": "test_scalable_vit",
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_imagenet_recipes_run_on_tiny_data(name: str, image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    """The full recipes (mixup, RandAugment, EMA, gradient clipping) run one step each on tiny data."""
    monkeypatch.chdir(tmp_path)
    tiny = RECIPES[name]
    _run(
        "fit", "--config", str(CONFIGS / name), *FAST, f"--model.init_args.backbone={tiny}",
        f"--data.init_args.root={image_folder}", "--trainer.fast_dev_run=1",
    )  # fmt: skip


def test_patchconvnet_predict_writes_attention_overlays(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    import cv2

    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "patchconvnet.yaml")
    common = [*FAST, "--model.init_args.backbone=test_patchconvnet", f"--data.init_args.root={image_folder}"]
    _run("fit", "--config", config, *common, "--trainer.max_epochs=1")
    ckpt = tmp_path / "runs" / "patchconvnet_s60_imagenet" / "version_0" / "checkpoints" / "last.ckpt"
    predict_root = image_folder / "val" / "star"
    out = tmp_path / "out"
    _run(
        "predict", "--config", config, *common, f"--ckpt_path={ckpt}", f"--data.init_args.predict_root={predict_root}",
        "--prediction_writer.save_attention=true", "--prediction_writer.save_visuals=true",
        f"--prediction_writer.output={out}",
    )  # fmt: skip
    for image_path in sorted(predict_root.iterdir()):
        original = cv2.imread(str(image_path))
        for kind in ("attention", "visuals"):
            written = cv2.imread(str(out / kind / f"{image_path.stem}.png"))
            assert written is not None and written.shape == original.shape, kind
            assert np.abs(written.astype(int) - original).mean() > 5, f"{kind} overlay left the image unchanged"


def test_an_error_from_a_loader_worker_is_printed_without_the_workers_traceback() -> None:
    from torch._utils import ExceptionWrapper

    try:
        raise DatasetError("cannot decode image a.png: the file is truncated")
    except DatasetError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DatasetError) as info:
        wrapped.reraise()
    assert "Original Traceback" in str(info.value)
    assert _message(info.value) == "cannot decode image a.png: the file is truncated"


def test_lightnings_own_misconfiguration_is_one_line(image_folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The configs' LearningRateMonitor needs a logger: without one Lightning's check ends in one line too."""
    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "demo" / "coat_lite.yaml")
    with pytest.raises(SystemExit) as exit_info:
        _run("fit", "--config", config, *FAST, f"--data.init_args.root={image_folder}", "--trainer.logger=false")
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("error: Cannot use `LearningRateMonitor`"), err[-3:]


@pytest.mark.parametrize(
    ("precision", "kernels", "keep", "expected"),
    [
        ("bf16-mixed", False, False, "32-true"),
        ("bf16-mixed", True, False, "bf16-mixed"),
        ("bf16-mixed", False, True, "bf16-mixed"),
        ("bf16-true", False, False, "bf16-true"),
        ("32-true", False, False, "32-true"),
    ],
)
def test_bf16_mixed_runs_fp32_on_a_cpu_without_bf16_kernels(
    precision: str, kernels: bool, keep: bool, expected: str, image_folder: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    """On an AVX2-only CPU bf16 is emulated (8-26x slower than fp32): a bf16-mixed recipe runs 32-true there, with a
    warning naming the key; LIGHTNING_VIT_CPU_BF16=keep and bf16-true keep bf16 (warned); CPUs with the kernels
    run what the config says."""
    import lightning_vit.cli as cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "cpu_bf16_kernels", lambda: kernels)
    if keep:
        monkeypatch.setenv("LIGHTNING_VIT_CPU_BF16", "keep")
    config = str(CONFIGS / "demo" / "coat_lite.yaml")
    args = [*FAST, f"--data.init_args.root={image_folder}", f"--trainer.precision={precision}"]
    with caplog.at_level("WARNING", logger="lightning_vit.cli"):
        run = main(["validate", "--config", config, *args, "--trainer.limit_val_batches=1"])
    assert run.trainer.precision == expected
    warned = [r.getMessage() for r in caplog.records if r.name == "lightning_vit.cli"]
    if kernels or precision == "32-true":
        assert warned == []
    else:
        assert len(warned) == 1 and warned[0].startswith(f"trainer.precision {precision}: this CPU has no bf16")
        assert ("running in 32-true" in warned[0]) == (expected == "32-true")
