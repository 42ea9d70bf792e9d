"""``python -m lightning_vit export`` and ``load_task``: ONNX / TorchScript files that compute what PyTorch does."""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, write_image_folder

from lightning_vit import export
from lightning_vit.backbones.pretrained import PretrainedError
from lightning_vit.cli import main as cli_main
from lightning_vit.export import (
    SUFFIXES,
    ExportError,
    MatrixAdaptiveAvgPool2d,
    check_export,
    export_model,
    main,
    read_metadata,
)
from lightning_vit.tasks import ImageClassifier, ObjectDetector, SemanticSegmenter
from lightning_vit.tasks.loading import load_task

CLASSES = ["circle", "square", "star"]
#: every family's trace generalises to other input sizes (the fixed-size fallback has its own test)
BACKBONES = ["test_coat_lite", "test_coat", "test_scalable_vit", "test_patchconvnet", "test_swin"]


def save_checkpoint(task: L.LightningModule, path: Path) -> Path:
    """A Lightning checkpoint of ``task`` as a plain ``Trainer`` writes it (no ``_class_path``, no DataModule)."""
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(path)
    return path


def classifier(backbone: str) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(backbone=backbone, class_names=CLASSES).eval()


def segmenter(backbone: str, head: str = "upernet") -> SemanticSegmenter:
    torch.manual_seed(0)
    task = SemanticSegmenter(backbone=backbone, num_classes=4, head=head, head_channels=16, aux_channels=8)
    for m in task.modules():  # non-trivial BatchNorm statistics, so that a wrong pooling shows in the logits
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return task.eval()


@pytest.fixture(scope="module")
def cli_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.ckpt`` of one training step of the demo recipe with CoaT-Lite on 32 px images, as the CLI writes it."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    write_image_folder(data / "train", classes=CLASSES, per_class=2)
    write_image_folder(data / "val", classes=CLASSES, per_class=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cli_main([
            "fit", "--config", str(CONFIGS / "demo" / "coat_lite.yaml"),
            "--model.init_args.backbone=test_coat_lite", "--trainer.accelerator=cpu", "--trainer.devices=1",
            "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", "--trainer.precision=32", "--data.init_args.num_workers=0",
            "--data.init_args.image_size=32", "--data.init_args.batch_size=2", f"--data.init_args.root={data}",
            "--data.init_args.mean=[0.5,0.4,0.3]", "--data.init_args.std=[0.2,0.25,0.3]",
        ])  # fmt: skip
    return root / "runs" / "demo_coat_lite" / "version_0" / "checkpoints" / "last.ckpt"


def _onnx_session(path: Path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_diff(got, expected: torch.Tensor) -> float:
    got = torch.as_tensor(got)
    assert got.shape == expected.shape
    return (got - expected).abs().max().item()


def test_load_task_from_a_cli_checkpoint(cli_checkpoint: Path) -> None:
    task = load_task(cli_checkpoint)
    stored = torch.load(cli_checkpoint, map_location="cpu", weights_only=True)
    assert isinstance(task, ImageClassifier) and not task.training
    assert task.class_names == CLASSES and task.hparams.backbone == "test_coat_lite"
    state = task.state_dict()
    assert state.keys() == stored["state_dict"].keys()
    assert all(torch.equal(state[k], v) for k, v in stored["state_dict"].items())
    optimizer = task.optimizer_factory([torch.nn.Parameter(torch.zeros(1))])  # the config's, built as the CLI does
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.05


def test_load_task_without_class_path_picks_the_task_by_its_arguments(tmp_path: Path) -> None:
    x = torch.randn(1, 3, 64, 64)
    for task in (classifier("test_patchconvnet"), segmenter("test_coat_lite", head="fpn")):
        path = save_checkpoint(task, tmp_path / f"{type(task).__name__}.ckpt")
        assert "_class_path" not in torch.load(path, weights_only=True)["hyper_parameters"]
        loaded = load_task(path)
        assert type(loaded) is type(task) and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x), task(x))


def test_load_task_errors_name_the_file_and_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(PretrainedError, match=r"missing\.ckpt is not a file \(expected a \.ckpt"):
        load_task(tmp_path / "missing.ckpt")

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(PretrainedError, match=r"garbage\.ckpt is not a readable PyTorch checkpoint"):
        load_task(garbage)

    weights = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2)}, weights)
    with pytest.raises(PretrainedError, match=r"weights\.pth is not a Lightning checkpoint .* 'hyper_parameters'"):
        load_task(weights)

    task = classifier("test_patchconvnet")
    ckpt = torch.load(save_checkpoint(task, tmp_path / "good.ckpt"), weights_only=True)
    ckpt["hyper_parameters"]["_class_path"] = "collections.OrderedDict"
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(PretrainedError, match=r"other\.ckpt: unknown task collections\.OrderedDict"):
        load_task(tmp_path / "other.ckpt")

    ckpt["hyper_parameters"]["_class_path"] = "lightning_vit.tasks.SemanticSegmenter"  # classifier weights
    torch.save(ckpt, tmp_path / "mismatch.ckpt")
    with pytest.raises(PretrainedError, match=r"mismatch\.ckpt: .*(do not fit|cannot build) SemanticSegmenter"):
        load_task(tmp_path / "mismatch.ckpt")

    ckpt["hyper_parameters"] = {"optimizer": functools.partial(torch.optim.SGD, lr=0.1), "backbone": "test_coat"}
    torch.save(ckpt, tmp_path / "pickled.ckpt")
    with pytest.raises(PretrainedError, match=r"refusing to load .*pickled\.ckpt.*functools\.partial"):
        load_task(tmp_path / "pickled.ckpt")


def test_matrix_adaptive_pool_equals_pytorch_at_sizes_other_than_the_traced_one() -> None:
    pool = MatrixAdaptiveAvgPool2d((3, 6))
    traced = torch.jit.trace(pool, torch.randn(1, 2, 16, 16))
    for h, w in [(16, 16), (2, 2), (7, 5), (25, 40)]:  # divisible, upsampling, uneven, overlapping bins
        x = torch.randn(2, 2, h, w)
        expected = F.adaptive_avg_pool2d(x, (3, 6))
        torch.testing.assert_close(pool(x), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(traced(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_torchscript_size_is_dynamic_for_every_family(backbone: str, tmp_path: Path) -> None:
    task = classifier(backbone)
    meta = export_model(task, tmp_path / "model.pt", "torchscript", image_size=(64, 64), metadata={"x": 1})
    assert meta == {"x": 1, "image_size": [64, 64], "dynamic_size": True}
    module = torch.jit.load(str(tmp_path / "model.pt"))
    x = torch.randn(3, 3, 48, 80)
    with torch.no_grad():
        assert _max_diff(module(x), task(x)) <= 1e-4


@pytest.mark.parametrize("backbone", BACKBONES)
def test_onnx_classification_equals_pytorch(backbone: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnx")
    ckpt = save_checkpoint(classifier(backbone), tmp_path / "model.ckpt")
    path = main(["--ckpt_path", str(ckpt), "--image_size", "64", "64", "--no-check"])
    assert path == tmp_path / "model.onnx"
    summary = capsys.readouterr().out
    assert f"ImageClassifier ({backbone}, 3 classes)" in summary and "output: logits (batch, 3)" in summary
    session = _onnx_session(path)
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    assert session.get_outputs()[0].shape == ["batch", 3]
    task = load_task(ckpt)
    for shape in [(1, 3, 64, 64), (3, 3, 48, 80)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert _max_diff(session.run(["logits"], {"image": x.numpy()})[0], task(x)) <= 1e-4


def test_cli_exports_a_cli_checkpoint_with_its_metadata(
    cli_checkpoint: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """Defaults: the file next to the checkpoint, the DataModule's 32 px, its mean / std, and the check printed."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    task = load_task(cli_checkpoint)
    expected_meta = {
        "task": "classification",
        "backbone": "test_coat_lite",
        "class_names": CLASSES,
        "image_size": [32, 32],
        "dynamic_size": True,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
    }
    for fmt, suffix in [("onnx", ".onnx"), ("torchscript", ".pt")]:
        path = cli_main(["export", "--ckpt_path", str(cli_checkpoint), "--format", fmt])
        assert path == cli_checkpoint.with_suffix(suffix) and path.is_file()
        meta = read_metadata(path)
        assert {k: meta[k] for k in expected_meta} == expected_meta
        assert meta["task_class"] == "lightning_vit.tasks.classification.ImageClassifier"
        out = capsys.readouterr().out
        assert "shapes: dynamic batch, height and width" in out
        figures = re.findall(r"([\d.e+-]+) at (\([\d, ]+\))", out.split("check:")[1])
        assert [shape for _, shape in figures] == ["(1, 3, 32, 32)", "(2, 3, 45, 59)"]  # batch + 1, size + (13, 27)
        assert all(float(d) <= 1e-4 for d, _ in figures), out

    session = _onnx_session(cli_checkpoint.with_suffix(".onnx"))
    module = torch.jit.load(str(cli_checkpoint.with_suffix(".pt")))
    x = torch.randn(4, 3, 40, 56)
    with torch.no_grad():
        expected = task(x)
        assert _max_diff(session.run(["logits"], {"image": x.numpy()})[0], expected) <= 1e-4
        assert _max_diff(module(x), expected) <= 1e-4

    out = tmp_path / "fixed" / "model.onnx"
    cli_main([
        "export", "--ckpt_path", str(cli_checkpoint), "--output", str(out), "--no-dynamic", "--no-check",
        "--opset", "13",
    ])  # fmt: skip
    assert "height and width fixed to 32x32 (--no-dynamic)" in capsys.readouterr().out
    assert _onnx_session(out).get_inputs()[0].shape == ["batch", 3, 32, 32]
    assert [op.version for op in onnx.load(str(out)).opset_import if op.domain == ""] == [13]


@pytest.mark.parametrize("backbone", ["test_coat_lite", pytest.param("test_patchconvnet", marks=pytest.mark.slow)])
def test_segmentation_exports_equal_pytorch_at_other_batch_and_size(
    backbone: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """UperNet's pyramid pooling (adaptive pools to 1, 2, 3, 6) at sizes that are no multiple of 32."""
    pytest.importorskip("onnx")
    task = segmenter(backbone)
    ckpt = save_checkpoint(task, tmp_path / "seg.ckpt")
    onnx_path = main(["--ckpt_path", str(ckpt), "--image_size", "64", "96", "--no-check"])
    ts_path = main(["--ckpt_path", str(ckpt), "--image_size", "64", "96", "--format", "torchscript", "--no-check"])
    summary = capsys.readouterr().out
    assert summary.count("output: logits (batch, 4, height, width)") == 2
    assert summary.count("input:  image (batch, 3, height, width) float32 RGB, (pixel / 255 - mean) / std") == 2
    session = _onnx_session(onnx_path)
    assert session.get_outputs()[0].shape == ["batch", 4, "height", "width"]
    module = torch.jit.load(str(ts_path))
    for meta in (read_metadata(onnx_path), read_metadata(ts_path)):
        assert meta["task"] == "segmentation" and meta["class_names"] == ["0", "1", "2", "3"]
        assert meta["image_size"] == [64, 96] and meta["dynamic_size"] is True and "mean" not in meta
        assert meta["output"] == "logits: (B, num_classes, H, W)"
        assert meta["input"] == "image: (B, 3, H, W) float32 RGB, (pixel / 255 - mean) / std"
    for shape in [(1, 3, 64, 96), (2, 3, 77, 91), (1, 3, 40, 130)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = task(x)
            assert expected.shape == (shape[0], 4, *shape[2:])
            assert _max_diff(session.run(["logits"], {"image": x.numpy()})[0], expected) <= 1e-4
            assert _max_diff(module(x), expected) <= 1e-4


def test_swin_segmentation_torchscript_takes_other_sizes(tmp_path: Path) -> None:
    """Swin pads to the window and builds its shift masks from the traced sizes, so the trace follows new sizes."""
    task = segmenter("test_swin")
    ckpt = save_checkpoint(task, tmp_path / "swin.ckpt")
    path = main(["--ckpt_path", str(ckpt), "--image_size", "64", "64", "--format", "torchscript"])
    assert read_metadata(path)["dynamic_size"] is True
    module = torch.jit.load(str(path))
    for shape in [(3, 3, 64, 64), (1, 3, 50, 90)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert _max_diff(module(x), task(x)) <= 1e-4


def test_detection_and_missing_checkpoints_are_one_line_errors(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    detector = ObjectDetector(backbone="test_coat_lite", detector="retinanet", num_classes=2, fpn_channels=16)
    ckpt = save_checkpoint(detector, tmp_path / "det.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt_path", str(ckpt), "--format", "torchscript"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"error: ckpt_path: {ckpt}: export handles ImageClassifier and SemanticSegmenter")
    assert "not ObjectDetector (detection models are not exported)" in err[0]
    assert not ckpt.with_suffix(".pt").exists()

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt_path", str(tmp_path / "absent.ckpt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    expected = (
        f"error: ckpt_path: {tmp_path / 'absent.ckpt'} is not a file (expected a .ckpt written by `lightning_vit fit`)"
    )
    assert err == [expected]

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt_path", str(ckpt), "--format", "tflite"])
    assert exit_info.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


class TopLeftMean(torch.nn.Module):
    """Logits: the mean of each channel over the image's top-left quarter, whose extent a trace keeps as constants."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        return x[:, :, : h // 2, : w // 2].mean((2, 3))  # (B, 3)


class FlatMean(torch.nn.Module):
    """Logits: per-channel means through a reshape to H * W, which fails in a trace at any other size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        return x.reshape(-1, 3, h * w).mean(-1)  # (B, 3)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("backbone", [TopLeftMean, FlatMean], ids=["wrong_at_other_sizes", "fails_at_other_sizes"])
def test_a_trace_specific_to_its_size_is_exported_at_that_size(
    backbone: type[torch.nn.Module], fmt: str, tmp_path: Path
) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    task = classifier("test_coat_lite")
    task.backbone = backbone()
    path = tmp_path / f"model{SUFFIXES[fmt]}"
    assert export_model(task, path, fmt, image_size=(64, 48))["dynamic_size"] is False
    assert read_metadata(path)["dynamic_size"] is False
    diffs = check_export(task, path)  # at the other batch only, where a dynamic export would fail
    assert list(diffs) == ["(1, 3, 64, 48)", "(2, 3, 64, 48)"] and max(diffs.values()) <= 1e-6
    if fmt == "onnx":
        assert _onnx_session(path).get_inputs()[0].shape == ["batch", 3, 64, 48]


def test_a_task_in_train_mode_is_exported_and_checked_in_eval_mode(tmp_path: Path) -> None:
    """BatchNorm on batch statistics would tell the trace apart from the model, and the check from the file."""
    task = segmenter("test_coat_lite", head="fpn").train()
    state = {k: v.clone() for k, v in task.state_dict().items()}
    path = tmp_path / "seg.pt"
    assert export_model(task, path, "torchscript", image_size=(64, 64))["dynamic_size"] is True
    assert max(check_export(task, path).values()) <= 1e-4
    assert task.training and all(torch.equal(v, task.state_dict()[k]) for k, v in state.items())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _max_diff(torch.jit.load(str(path))(x), task.eval()(x)) <= 1e-4


def test_options_that_overwrite_the_checkpoint_or_misname_the_file_are_one_line_errors(
    cli_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt_pt = Path(shutil.copy(cli_checkpoint, tmp_path / "model.pt"))
    ckpt = Path(shutil.copy(cli_checkpoint, tmp_path / "model.ckpt"))
    content = cli_checkpoint.read_bytes()
    cases = [
        (
            ["--ckpt_path", ckpt_pt, "--format", "torchscript"],
            f"--output {ckpt_pt} is the --ckpt_path: the export would overwrite the checkpoint; pass --output with "
            "another .pt file",
        ),
        (["--ckpt_path", ckpt, "--output", ckpt], f"--output {ckpt} is the --ckpt_path: the export would overwrite"),
        (
            ["--ckpt_path", ckpt, "--format", "torchscript", "--output", tmp_path / "model.onnx"],
            f"--output {tmp_path / 'model.onnx'}: --format torchscript writes a .pt file, not '.onnx'",
        ),
        (
            ["--ckpt_path", ckpt, "--format", "torchscript", "--opset", "13"],
            "--opset 13: --format torchscript has no opset (--opset is for --format onnx)",
        ),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["export", *map(str, args)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "model.pt"]
    assert ckpt_pt.read_bytes() == content and ckpt.read_bytes() == content


def test_a_failed_check_moves_the_file_aside_and_is_a_one_line_error(
    cli_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reloaded file computes 0.5 more than PyTorch: it must not stay at ``--output``."""
    load = export._load_exported
    monkeypatch.setattr(export, "_load_exported", lambda path: lambda x: load(path)(x) + 0.5)
    out = tmp_path / "model.pt"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export", "--ckpt_path", str(cli_checkpoint), "--format", "torchscript", "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {out}: the exported model differs from PyTorch on an input (1, 3, 32, 32)")
    assert err[0].endswith(f"max |diff| 0.5; the file is moved to {out}.failed (--no-check skips the check)")
    assert not out.exists() and read_metadata(tmp_path / "model.pt.failed")["image_size"] == [32, 32]


def test_read_metadata_of_a_file_export_did_not_write_names_the_file(cli_checkpoint: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(scripted))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model")
    bare = tmp_path / "bare.onnx"
    value = functools.partial(onnx.helper.make_tensor_value_info, elem_type=onnx.TensorProto.FLOAT, shape=[1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [value("x")], [value("y")])
    onnx.save(onnx.helper.make_model(graph), str(bare))
    for path in (scripted, garbage, bare, cli_checkpoint):  # TorchScript, protobuf, ONNX, zip without the file
        with pytest.raises(ExportError, match=rf"^{re.escape(str(path))}: no lightning_vit export metadata \(expected"):
            read_metadata(path)
    with pytest.raises(ExportError, match=r"absent\.onnx is not a file \(expected an ONNX or TorchScript file"):
        read_metadata(tmp_path / "absent.onnx")
