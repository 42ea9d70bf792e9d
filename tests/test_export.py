"""``python -m lightning_vit export`` and ``load_task``: ONNX / TorchScript files that compute what PyTorch does."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, write_image_folder

from lightning_vit.backbones.pretrained import PretrainedError
from lightning_vit.cli import main as cli_main
from lightning_vit.export import MatrixAdaptiveAvgPool2d, export_model, main, read_metadata
from lightning_vit.tasks import ImageClassifier, ObjectDetector, SemanticSegmenter
from lightning_vit.tasks.loading import load_task

CLASSES = ["circle", "square", "star"]
#: whether each family's trace generalises to other input sizes
DYNAMIC_SIZE = {
    "test_coat_lite": True,
    "test_coat": True,
    "test_scalable_vit": True,
    "test_patchconvnet": True,
    "test_swin": True,
}


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


@pytest.mark.parametrize("backbone", list(DYNAMIC_SIZE))
def test_torchscript_size_is_dynamic_where_the_family_allows(backbone: str, tmp_path: Path) -> None:
    task = classifier(backbone)
    meta = export_model(task, tmp_path / "model.pt", "torchscript", image_size=(64, 64), metadata={"x": 1})
    assert meta == {"x": 1, "image_size": [64, 64], "dynamic_size": DYNAMIC_SIZE[backbone]}
    module = torch.jit.load(str(tmp_path / "model.pt"))
    size = (48, 80) if meta["dynamic_size"] else (64, 64)
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        assert _max_diff(module(x), task(x)) <= 1e-4


@pytest.mark.parametrize(
    "backbone",
    [
        "test_coat_lite",
        "test_patchconvnet",
        "test_coat",
        "test_scalable_vit",
        "test_swin",
    ],
)
def test_onnx_classification_equals_pytorch(backbone: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("onnx")
    ckpt = save_checkpoint(classifier(backbone), tmp_path / "model.ckpt")
    path = main(["--ckpt_path", str(ckpt), "--image_size", "64", "64", "--no-check"])
    assert path == tmp_path / "model.onnx"
    summary = capsys.readouterr().out
    assert f"ImageClassifier ({backbone}, 3 classes)" in summary and "output: logits (batch, 3)" in summary
    session = _onnx_session(path)
    dynamic = DYNAMIC_SIZE[backbone]
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"] if dynamic else ["batch", 3, 64, 64]
    assert session.get_outputs()[0].shape == ["batch", 3]
    task = load_task(ckpt)
    for shape in [(1, 3, 64, 64), (3, 3, 48, 80) if dynamic else (3, 3, 64, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert _max_diff(session.run(["logits"], {"image": x.numpy()})[0], task(x)) <= 1e-4


def test_cli_exports_a_cli_checkpoint_with_its_metadata(
    cli_checkpoint: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """Defaults: the file next to the checkpoint, the DataModule's 32 px, its mean / std, and the check printed."""
    pytest.importorskip("onnx")
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
    cli_main(["export", "--ckpt_path", str(cli_checkpoint), "--output", str(out), "--no-dynamic", "--no-check"])
    assert "height and width fixed to 32x32 (--no-dynamic)" in capsys.readouterr().out
    assert _onnx_session(out).get_inputs()[0].shape == ["batch", 3, 32, 32]


@pytest.mark.parametrize("backbone", ["test_coat_lite", pytest.param("test_patchconvnet", marks=pytest.mark.slow)])
def test_segmentation_exports_equal_pytorch_at_other_batch_and_size(backbone: str, tmp_path: Path) -> None:
    """UperNet's pyramid pooling (adaptive pools to 1, 2, 3, 6) at sizes that are no multiple of 32."""
    pytest.importorskip("onnx")
    task = segmenter(backbone)
    ckpt = save_checkpoint(task, tmp_path / "seg.ckpt")
    onnx_path = main(["--ckpt_path", str(ckpt), "--image_size", "64", "96", "--no-check"])
    ts_path = main(["--ckpt_path", str(ckpt), "--image_size", "64", "96", "--format", "torchscript", "--no-check"])
    session = _onnx_session(onnx_path)
    assert session.get_outputs()[0].shape == ["batch", 4, "height", "width"]
    module = torch.jit.load(str(ts_path))
    for meta in (read_metadata(onnx_path), read_metadata(ts_path)):
        assert meta["task"] == "segmentation" and meta["class_names"] == ["0", "1", "2", "3"]
        assert meta["image_size"] == [64, 96] and meta["dynamic_size"] is True and "mean" not in meta
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
