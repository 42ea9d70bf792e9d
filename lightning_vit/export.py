"""``python -m lightning_vit export``: a classification or segmentation checkpoint to ONNX or TorchScript.

    python -m lightning_vit export --ckpt_path runs/.../best.ckpt --format onnx
    python -m lightning_vit export --ckpt_path runs/.../best.ckpt --format torchscript --image_size 512 512

The exported graph is the task's ``forward``: classification gives logits (B, num_classes) (apply a softmax for
probabilities, as ``predict`` does), segmentation gives logits (B, num_classes, H, W) at the input size (whole-image
inference). The input ``image`` is (B, 3, H, W) float32 RGB, normalised as the DataModule did:
``(pixel / 255 - mean) / std``. The batch is always dynamic. H and W are dynamic when the model traced at
``--image_size`` also computes correctly at another size, which export tries before writing: every registered
family does (Swin pads to its windows and builds its shift masks from the traced sizes). A model whose trace bakes
in the size (a reshape or crop to Python ints) is exported at that fixed size instead.

Both formats come from one ``torch.jit.trace`` of the model; ONNX by PyTorch's TorchScript-based exporter
(``dynamo=False``): in torch 2.14 the ``torch.export``-based one fails on Swin and PatchConvNet and takes minutes on
ScalableViT with dynamic sizes. Adaptive average pools other than global ones (UperNet's pyramid pooling) are
exported as two averaging matrices built from the input size, since ONNX has no adaptive pooling.

The file carries metadata (ONNX ``metadata_props``; TorchScript ``_extra_files["metadata.json"]``): ``task``,
``class_names`` (JSON), ``image_size``, ``dynamic_size``, ``mean`` / ``std`` when the checkpoint records the
DataModule's, the backbone and a description of the input and output. ``--check`` (default) reloads the file, in
onnxruntime for ONNX, and compares it with PyTorch on the example input and on one of another batch size (and size,
when dynamic); a file that fails is moved aside to ``<output>.failed``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from lightning_vit.backbones.pretrained import PretrainedError
from lightning_vit.tasks import ImageClassifier, SemanticSegmenter
from lightning_vit.tasks.base import BaseTask
from lightning_vit.tasks.loading import read_lightning_checkpoint, task_from_checkpoint

__all__ = ["ExportError", "check_export", "describe", "export_model", "main", "read_metadata"]

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
METADATA_FILE = "metadata.json"
#: metadata stored as JSON text in ONNX ``metadata_props`` (the other values are plain strings)
JSON_KEYS = ("class_names", "image_size", "dynamic_size", "mean", "std")
INPUT, OUTPUT = "image", "logits"
DEFAULT_SIZE = 224
DEFAULT_OPSET = 17
#: the other size (h + 13, w + 27) a dynamic export is checked at: odd, so no window or patch divides it
SIZE_STEP = (13, 27)


class ExportError(PretrainedError):
    """Contradicting export options, or a file that is not a (correct) export; the message names the option or file.

    A :class:`PretrainedError`, so that the CLI reports it as one line.
    """


def _bins(n: int | torch.Tensor, s: int, x: torch.Tensor) -> torch.Tensor:
    """(s, n) matrix averaging PyTorch's adaptive-pool bins ``[floor(i n / s), ceil((i + 1) n / s))``."""
    i = torch.arange(s, device=x.device)
    start = torch.div(i * n, s, rounding_mode="floor")
    end = torch.div((i + 1) * n + s - 1, s, rounding_mode="floor")
    j = torch.arange(n, device=x.device)
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(x.dtype) / (end - start)[:, None].to(x.dtype)


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as ``P_h @ x @ P_w^T``, which traces with the input's size as a variable."""

    def __init__(self, output_size: int | Sequence[int]) -> None:
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _bins(x.shape[-2], self.output_size[0], x)  # (s_h, H)
        cols = _bins(x.shape[-1], self.output_size[1], x)  # (s_w, W)
        return rows @ x @ cols.transpose(0, 1)  # (B, C, s_h, s_w)


def _exportable(task: BaseTask) -> BaseTask:
    """A copy of ``task`` whose non-global adaptive average pools are :class:`MatrixAdaptiveAvgPool2d`."""
    task = copy.deepcopy(task)
    for module in list(task.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size not in (1, (1, 1)):
                setattr(module, name, MatrixAdaptiveAvgPool2d(child.output_size))
    return task


def _example(batch: int, size: Sequence[int], seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _matches(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-3, atol=1e-4)


def _traces_any_size(traced: torch.jit.ScriptModule, task: BaseTask, example: torch.Tensor) -> bool:
    """Whether the trace at ``example``'s size computes the model at another size (and batch) too."""
    other = _example(len(example) + 1, [s + d for s, d in zip(example.shape[-2:], SIZE_STEP)], seed=1)
    try:
        with torch.no_grad():
            return _matches(traced(other), task(other))
    except RuntimeError:  # a view or reshape to a size baked into the trace
        return False


def _io_text(task: BaseTask, batch: str, classes: str | int, hw: str) -> tuple[str, str]:
    """The input and output of ``task`` in words, with ``batch``, ``classes`` and ``hw`` (height, width) as given."""
    output = f"({batch}, {classes})" if task.prediction_format == "classification" else f"({batch}, {classes}, {hw})"
    return f"({batch}, 3, {hw}) float32 RGB, (pixel / 255 - mean) / std", output


def describe(task: BaseTask, checkpoint: dict) -> dict:
    """What an export of ``task`` records about the model and its data (:func:`export_model` adds the sizes)."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    inputs, output = _io_text(task, "B", "num_classes", "H, W")
    meta = {
        "task": task.prediction_format,
        "task_class": f"{type(task).__module__}.{type(task).__name__}",
        "backbone": task.hparams.backbone,
        "class_names": list(task.class_names),
        "input": f"{INPUT}: {inputs}",
        "output": f"{OUTPUT}: {output}",
    }
    meta.update({k: list(data[k]) for k in ("mean", "std") if k in data})
    return meta


def _jit_load(path: Path, **kwargs) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice, on every load
        return torch.jit.load(str(path), map_location="cpu", **kwargs)


def read_metadata(path: str | Path) -> dict:
    """The metadata of an exported file (TorchScript, or ONNX with the ``onnx`` package), JSON values decoded.

    Raises:
        ExportError: ``path`` is missing or is not a file written by :func:`export_model`.
    """
    path = Path(path)
    expected = "expected an ONNX or TorchScript file written by `python -m lightning_vit export`"
    if not path.is_file():
        raise ExportError(f"{path} is not a file ({expected})")
    torchscript = zipfile.is_zipfile(path)  # TorchScript files are zip archives, ONNX ones protobuf
    if not torchscript:
        import onnx
    try:
        if torchscript:
            files = {METADATA_FILE: ""}
            _jit_load(path, _extra_files=files)
            meta = json.loads(files[METADATA_FILE] or "{}")
        else:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            meta = {k: json.loads(v) if k in JSON_KEYS else v for k, v in props.items()}
    except Exception as err:  # torch.jit's RuntimeError, protobuf's DecodeError, JSON's ValueError: no common base
        raise ExportError(f"{path}: no lightning_vit export metadata ({expected}): {err}") from err
    if not isinstance(meta, dict) or not {"image_size", "dynamic_size"} <= meta.keys():
        raise ExportError(f"{path}: no lightning_vit export metadata ({expected})")
    return meta


def export_model(
    task: BaseTask,
    output: str | Path,
    fmt: str = "onnx",
    image_size: Sequence[int] = (DEFAULT_SIZE, DEFAULT_SIZE),
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    metadata: dict | None = None,
) -> dict:
    """Trace ``task.forward`` and write it as ONNX or TorchScript.

    Args:
        task: an :class:`ImageClassifier` or :class:`SemanticSegmenter`; exported in eval mode, left as it is.
        output: file to write.
        fmt: ``onnx`` or ``torchscript``.
        image_size: (H, W) of the example input the model is traced at.
        batch_size: batch of the example input (the exported batch is dynamic regardless).
        opset: ONNX opset.
        dynamic: make H and W dynamic when the trace allows it (else they are fixed to ``image_size``).
        metadata: string-keyed values to store in the file, e.g. from :func:`describe`.

    Returns:
        The metadata written: ``metadata`` with ``image_size`` and ``dynamic_size`` (whether H and W are).
    """
    if fmt not in SUFFIXES:
        raise ValueError(f"format must be one of {list(SUFFIXES)}, got {fmt!r}")
    example = _example(batch_size, image_size, seed=0)
    model = _exportable(task).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation notices: the comparisons below decide what holds
        traced = model.to_torchscript(method="trace", example_inputs=example, check_trace=False)
        dynamic_size = dynamic and _traces_any_size(traced, model, example)
        metadata = {**(metadata or {}), "image_size": list(image_size), "dynamic_size": dynamic_size}
        if fmt == "torchscript":
            torch.jit.save(traced, str(output), _extra_files={METADATA_FILE: json.dumps(metadata)})
            return metadata
        spatial = {2: "height", 3: "width"} if dynamic_size else {}
        out_axes = {0: "batch"} if task.prediction_format == "classification" else {0: "batch", **spatial}
        torch.onnx.export(
            traced, (example,), str(output), dynamo=False, opset_version=opset, input_names=[INPUT],
            output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch", **spatial}, OUTPUT: out_axes},
        )  # fmt: skip
    import onnx

    proto = onnx.load(str(output))
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = task.num_classes  # lost through a final Resize
    onnx.helper.set_model_props(proto, {k: json.dumps(v) if k in JSON_KEYS else str(v) for k, v in metadata.items()})
    onnx.save(proto, str(output))
    return metadata


def _load_exported(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The written file as a function of a (B, 3, H, W) tensor, in TorchScript or onnxruntime."""
    if zipfile.is_zipfile(path):
        return _jit_load(path)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])


def check_export(task: BaseTask, path: str | Path, batch_size: int = 1) -> dict[str, float]:
    """Max |exported - PyTorch| on the example input and on one of batch + 1 (and another size when dynamic).

    Args:
        task: the model exported; compared in eval mode, left as it is.
        path: the file written by :func:`export_model` (its metadata gives the size and whether it is dynamic).
        batch_size: batch of the example input.

    Returns:
        ``{"(B, 3, H, W)": max_abs_diff}`` per input checked.

    Raises:
        ExportError: ``path`` is no export, or the exported model fails on an input or its output is not close to
            PyTorch's.
    """
    path = Path(path)
    task = copy.deepcopy(task).eval()
    meta = read_metadata(path)
    size = meta["image_size"]
    other = [s + d for s, d in zip(size, SIZE_STEP)] if meta["dynamic_size"] else size
    run = _load_exported(path)
    diffs = {}
    for x in (_example(batch_size, size, seed=0), _example(batch_size + 1, other, seed=2)):
        shape = str(tuple(x.shape))
        with torch.no_grad():
            expected = task(x)
            try:
                got = run(x)
            except Exception as err:  # onnxruntime's and TorchScript's errors share no base class
                raise ExportError(f"{path}: the exported model fails on an input {shape}: {err}") from err
        diffs[shape] = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
        if not _matches(got, expected):
            raise ExportError(
                f"{path}: the exported model differs from PyTorch on an input {shape}: output "
                f"{tuple(got.shape)} vs {tuple(expected.shape)}, max |diff| {diffs[shape]:.3g}"
            )
    return diffs


def _default_size(checkpoint: dict) -> tuple[int, int]:
    """The DataModule's ``crop_size`` (segmentation) or ``image_size`` (classification), else 224."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    size = next((data[k] for k in ("crop_size", "image_size") if data.get(k) is not None), DEFAULT_SIZE)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_vit export",
        description="Export a classification or segmentation checkpoint to ONNX or TorchScript.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by `python -m lightning_vit fit`")
    parser.add_argument("--format", choices=list(SUFFIXES), default="onnx", help="output format (default: onnx)")
    parser.add_argument("--output", type=Path, help="output file (default: the checkpoint's path with .onnx / .pt)")
    parser.add_argument(
        "--image_size", type=int, nargs=2, metavar=("H", "W"),
        help="example input size (default: the DataModule's crop_size / image_size in the checkpoint, else 224)",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=1, help="example input batch (the batch stays dynamic)")
    parser.add_argument("--opset", type=int, help=f"ONNX opset, --format onnx only (default: {DEFAULT_OPSET})")
    parser.add_argument(
        "--dynamic", action=argparse.BooleanOptionalAction, default=True,
        help="dynamic H and W where the model traces with them (default); --no-dynamic fixes them to --image_size",
    )  # fmt: skip
    parser.add_argument(
        "--check", action=argparse.BooleanOptionalAction, default=True,
        help="reload the file (onnxruntime for ONNX) and compare it with PyTorch (default)",
    )  # fmt: skip
    return parser


def main(argv: list[str]) -> Path:
    """Run ``export`` with command-line arguments ``argv``; prints a summary and returns the file written.

    Raises:
        PretrainedError: the checkpoint is missing, unreadable or not of a classification or segmentation task.
        ExportError: the options contradict each other (``--output`` would overwrite the checkpoint or has the
            other format's suffix, ``--opset`` with TorchScript), or ``--check`` fails; the failed file is then
            moved to ``<output>.failed``.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    needed = (["onnx"] + (["onnxruntime"] if args.check else [])) if args.format == "onnx" else []
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        parser.error(f"--format onnx needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    if (args.image_size and min(args.image_size) < 32) or args.batch_size < 1:
        parser.error("--image_size H W must be at least 32 and --batch_size at least 1")

    ckpt_path = Path(args.ckpt_path)
    suffix = SUFFIXES[args.format]
    output = args.output or ckpt_path.with_suffix(suffix)
    if output.resolve() == ckpt_path.resolve():
        raise ExportError(
            f"--output {output} is the --ckpt_path: the export would overwrite the checkpoint; pass --output with "
            f"another {suffix} file"
        )
    if output.suffix.lower() != suffix:
        raise ExportError(f"--output {output}: --format {args.format} writes a {suffix} file, not {output.suffix!r}")
    if args.opset is not None and args.format != "onnx":
        raise ExportError(f"--opset {args.opset}: --format {args.format} has no opset (--opset is for --format onnx)")

    checkpoint = read_lightning_checkpoint(ckpt_path)
    task = task_from_checkpoint(checkpoint, ckpt_path)
    if not isinstance(task, (ImageClassifier, SemanticSegmenter)):
        raise PretrainedError(
            f"ckpt_path: {ckpt_path}: export handles ImageClassifier and SemanticSegmenter checkpoints, not "
            f"{type(task).__name__} (detection models are not exported)"
        )
    size = tuple(args.image_size) if args.image_size else _default_size(checkpoint)
    output.parent.mkdir(parents=True, exist_ok=True)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    meta = export_model(
        task, output, args.format, size, args.batch_size, opset, args.dynamic, describe(task, checkpoint)
    )
    if args.check:
        try:
            diffs = check_export(task, output, args.batch_size)
        except ExportError as err:
            failed = output.with_name(output.name + ".failed")
            output.replace(failed)
            raise ExportError(f"{err}; the file is moved to {failed} (--no-check skips the check)") from err

    h, w = size
    hw = "height, width" if meta["dynamic_size"] else f"{h}, {w}"
    inputs, outputs = _io_text(task, "batch", task.num_classes, hw)
    if meta["dynamic_size"]:
        shapes = "dynamic batch, height and width"
    else:
        why = "the traced model is specific to its input size" if args.dynamic else "--no-dynamic"
        shapes = f"dynamic batch; height and width fixed to {h}x{w} ({why})"
    print(f"exported {type(task).__name__} ({meta['backbone']}, {task.num_classes} classes) from {ckpt_path}")
    print(f"  file:   {output} ({output.stat().st_size / 2**20:.1f} MiB, {args.format})")
    print(f"  input:  {INPUT} {inputs}")
    print(f"  output: {OUTPUT} {outputs}")
    print(f"  shapes: {shapes}")
    if args.check:
        print("  check:  max |diff| vs PyTorch " + ", ".join(f"{d:.2e} at {s}" for s, d in diffs.items()))
    return output
