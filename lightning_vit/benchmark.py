"""``python -m lightning_vit benchmark``: speed and memory of backbones and task models, Lightning's per-step
overhead, and the speed of the data pipeline.

Examples::

    # backbones, inference and training step, fp32 and bf16, against timm's model of the same name
    python -m lightning_vit benchmark --backbone swin_tiny_patch4_window7_224 coat_lite_tiny \\
        --precision fp32 bf16 --compare timm --json results.json
    # ScalableViT and PatchConvNet (not in timm) against straightforward ports of their official code
    python -m lightning_vit benchmark --backbone scalable_vit_small patchconvnet_s60 --compare port
    # a task model: UperNet on Swin-T at 512, Mask R-CNN on CoaT-Lite at 800x1216
    python -m lightning_vit benchmark --backbone swin_tiny_patch4_window7_224 --task segmentation
    python -m lightning_vit benchmark --backbone coat_lite_small --task detection --mode train
    # memory saved by gradient checkpointing, and what it costs in speed
    python -m lightning_vit benchmark --backbone swin_tiny_patch4_window7_224 --mode train --grad_checkpointing
    # Lightning's per-step overhead against a plain PyTorch loop; the data pipeline against timm's
    python -m lightning_vit benchmark --loop --backbone coat_lite_tiny
    python -m lightning_vit benchmark --data [--data_root folder/of/jpegs]

How to read the numbers:

- A *step* is one batch. ``infer``: forward pass in eval mode under ``torch.inference_mode``. ``train``: forward,
  cross-entropy against random labels (a task model's own ``training_step`` loss with ``--task``), backward, AdamW
  step (fused on CPU and CUDA, as the tasks' default optimizer) and ``zero_grad``, in train mode. ``bf16`` and
  ``fp16`` run the forward under autocast with fp32 weights; ``fp16`` (CUDA only) scales the loss with a GradScaler.
- Every model runs ``--warmup`` untimed steps (compilation, allocator and cache warm-up), then ``--repeats`` timed
  steps. Models that are compared (ours and timm's or the port's, with and without checkpointing) are built with the
  same weights and alternate step by step, in alternating order, so that the noise of a shared machine hits them
  alike. ``--compare port`` times ``lightning_vit.ports``: the official code's way of computing ScalableViT and
  PatchConvNet (token sequences, NCHW copies around convolutions, explicit attention, plain ``nn.Linear``), what
  a user of the official implementation gets; it takes the sizes the official code takes (ScalableViT: multiples
  of 224; PatchConvNet: square token grids).
  ``img/s`` is the batch over the median step time; ``ms`` the median, ``p90`` and ``min`` step times.
- ``cpu ms`` is the median CPU time of the process per step (all its threads). With one thread (``--threads 1``)
  it is the compute time, barely affected by other processes taking the core away; with several it also counts
  threads spinning while they wait for each other. On CUDA it is the host's time.
- ``ratio`` is the row's img/s over that of the row named in ``vs`` (above 1: faster), ``q1`` and ``q3`` the
  quartiles of the ratio round by round (the two steps of a round ran back to back: a spread that straddles 1 says
  the two are even within the machine's noise), ``cpu ratio`` the same from CPU times, ``mem ratio`` the row's
  memory over the other's. Prefer ratios to absolute figures on a busy machine,
  and ``cpu ratio`` with ``--threads 1`` where other processes share the cores.
- ``mem MB`` = parameters, buffers and optimizer state (exact tensor bytes) plus the peak growth during one extra
  step. On CUDA the growth is ``torch.cuda.max_memory_allocated`` minus what was allocated before the step. On CPU
  it is the kernel's resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` after
  ``malloc_trim``) minus the resident set before the step: it counts allocator overhead and fragmentation too, so
  compare CPU figures with each other, not with CUDA ones (Linux only; elsewhere the column is empty).
  Both include the gradients and the optimizer's temporaries, which gradient checkpointing does not reduce.
- ``saved MB`` (training, not with ``--compile``): the activations autograd keeps for the backward pass (distinct
  storages of the tensors it saves, parameters left out), exact on every device: what checkpointing trades for
  recomputation.
- ``--loop``: the same ImageClassifier, data (in-memory random images through one DataLoader) and optimizer and
  schedule (AdamW + per-step cosine, as ``configure_optimizers``) run ``--steps`` steps under a Lightning ``Trainer``
  (no logger, checkpointing, progress bar or model summary) and under a plain loop that calls the same
  ``training_step``, backward, ``optimizer.step``, ``scheduler.step``; ``--repeats`` rounds alternate the two.
  ``s/step`` is the median time between the starts of consecutive steps (the first ``--warmup`` of a round left
  out), so it includes fetching the batch and every per-step hook but no set-up; ``overhead`` is Lightning's extra
  time per step in percent of the plain loop's.
- ``--data``: images/s of one process (one thread: what one DataLoader worker does) that decodes and augments the
  same JPEG files with this project's pipeline (OpenCV ``read_image`` + albumentations
  ``classification_train_transform``) and timm's (``PIL.Image.open(...).convert("RGB")`` +
  ``create_transform(is_training=True)``), at the same strength: both with RandAugment ``rand-m9-mstd0.5-inc1`` and
  per-pixel random erasing (p 0.25; timm's magnitude capped at 9, see ``DATA_SETTINGS``), and both with crop,
  flip and normalisation only; bicubic, no colour jitter. Without ``--data_root``, 64 textured 500x375 JPEGs
  (quality 90, about 100 kB: ImageNet's typical size) are generated.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import importlib
import inspect
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightning_vit.backbones import backbone_family, create_backbone
from lightning_vit.runtime import cpu_bf16_kernels
from lightning_vit.tasks.optim import fused_kernel_available

__all__ = [
    "PeakMemory",
    "SavedActivations",
    "build_parser",
    "format_table",
    "machine_info",
    "main",
    "run_data",
    "run_loop",
    "run_models",
    "write_jpegs",
]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("infer", "train")
TASKS = ("classification", "segmentation", "detection")
TIMM_MODULES = {"swin": "timm.models.swin_transformer", "coat": "timm.models.coat"}  # our family -> timm's module
DEFAULT_SIZE = {None: (224, 224), "classification": (224, 224), "segmentation": (512, 512), "detection": (800, 1216)}
DEFAULT_CLASSES = {None: 1000, "classification": 1000, "segmentation": 150, "detection": 80}
# setting: (our classification_train_transform's options, timm's create_transform's), the same strength for both.
# timm's magnitude is capped at 9 (mmax9): at 10 its posterize asks Pillow (>= 11) for 0 bits, which raises.
DATA_SETTINGS = {
    "randaugment+erasing": (
        dict(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25),
        dict(auto_augment="rand-m9-mstd0.5-inc1-mmax9", re_prob=0.25, re_mode="pixel"),
    ),
    "crop+flip": (dict(auto_augment=None, re_prob=0.0), dict(auto_augment=None, re_prob=0.0)),
}
LOOP_PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


# ----------------------------------------------------------------------------------------------------------------
# measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None where there is none."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    return None


def _reset_peak_rss() -> bool:
    """Trim glibc's free memory, then reset the kernel's resident-set high-water mark to the current resident set."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` sets ``m.peak`` to the peak memory growth (bytes) inside the block.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation on entry. CPU: the resident-set high-water mark
    minus the resident set on entry (Linux), None elsewhere. See the module docstring.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None
        self._base: int | None = None

    def __enter__(self) -> PeakMemory:
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif _reset_peak_rss():
            self._base = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        _sync(self.device)
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._base is not None:
            hwm = _status_kb("VmHWM")
            self.peak = None if hwm is None else max(hwm - self._base, 0) * 1024


class SavedActivations:
    """``with SavedActivations(model, mode, compiled) as s: <training step>`` sets ``s.nbytes``: the bytes of the
    activations autograd keeps for the backward pass (distinct storages), the memory that gradient checkpointing
    trades for recomputation. Parameters are left out, and so are autocast's low-precision copies of them (and
    views of those), which depend on the model, not on the batch. ``None`` in inference and for compiled models
    (whose saved tensors are the compiled graph's own business).
    """

    # grad_fn names of the casts and views between a parameter and what a layer saves of it
    _PARAMETER_VIEWS = frozenset(
        {"ToCopyBackward0", "TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0",
         "ExpandBackward0", "UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1"}
    )  # fmt: skip

    def __init__(self, model: nn.Module, mode: str, compiled: bool) -> None:
        self.active = mode == "train" and not compiled
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self._param_ids = {id(p) for p in model.parameters()}
        self.storages: dict[int, int] = {}
        self.nbytes: int | None = None
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.params and not self._is_parameter_copy(t):
            self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    def _is_parameter_copy(self, t: torch.Tensor) -> bool:
        fn = t.grad_fn
        while fn is not None and type(fn).__name__ in self._PARAMETER_VIEWS:
            inputs = [f for f, _ in fn.next_functions if f is not None]
            if len(inputs) != 1:
                return False
            fn = inputs[0]
        return fn is not None and type(fn).__name__ == "AccumulateGrad" and id(fn.variable) in self._param_ids

    def __enter__(self) -> SavedActivations:
        if self.active:
            self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            self._hooks.__exit__(*exc)
            self.nbytes = sum(self.storages.values())


def _tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Parameters, buffers and optimizer state."""
    total = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers())
    if optimizer is not None:
        total += _tensor_bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return total


def _stats(times: list[float]) -> dict[str, float]:
    """Median, 90th percentile and minimum of step times, in ms."""
    ms = np.asarray(times) * 1e3
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "min": float(ms.min())}


def _interleaved(
    runs: dict[str, Callable[[], None]], warmup: int, repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU times (s) of each run's steps.

    ``warmup`` untimed steps each, then ``repeats`` rounds in alternating order.
    """
    for _ in range(warmup):
        for run in runs.values():
            run()
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    order = list(runs)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[name]()
            _sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


# ----------------------------------------------------------------------------------------------------------------
# models and what a step feeds them


@dataclass
class Workload:
    """What a step feeds a model: ``infer(model)`` runs the forward pass, ``loss(model)`` returns the training loss."""

    infer: Callable[[nn.Module], object]
    loss: Callable[[nn.Module], torch.Tensor]
    images: int


def _backbone_workload(batch: int, size: tuple[int, int], num_classes: int, device: torch.device, cl: bool) -> Workload:
    x = torch.randn(batch, 3, *size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    y = torch.randint(num_classes, (batch,), device=device)
    return Workload(infer=lambda m: m(x), loss=lambda m: F.cross_entropy(m(x).float(), y), images=batch)


def _detection_target(h: int, w: int, num_classes: int, device: torch.device, generator: torch.Generator) -> dict:
    """Five random boxes with box-filling masks, as the COCO DataModule gives them."""
    xy = torch.rand(5, 2, generator=generator) * torch.tensor([w * 0.7, h * 0.7])
    wh = torch.rand(5, 2, generator=generator) * torch.tensor([w * 0.3, h * 0.3]) + 16
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[:, 0::2].clamp_(max=w)
    boxes[:, 1::2].clamp_(max=h)
    masks = torch.zeros(5, h, w, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.round().long().tolist()):
        mask[y1:y2, x1:x2] = 1
    labels = torch.randint(num_classes, (5,), generator=generator)
    return {"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)}


def _task_workload(
    task: str, batch: int, size: tuple[int, int], num_classes: int, device: torch.device, cl: bool
) -> Workload:
    """A task's batch in the DataModule's format: ``infer`` calls the task, ``loss`` its ``training_step``."""
    generator = torch.Generator().manual_seed(0)
    if task == "detection":
        images = [torch.randn(3, *size, generator=generator).to(device) for _ in range(batch)]
        targets = [_detection_target(*size, num_classes, device, generator) for _ in range(batch)]
        data = {"image": images, "target": targets}
    else:
        images = torch.randn(batch, 3, *size, generator=generator).to(device)
        images = images.contiguous(memory_format=torch.channels_last) if cl else images
        data = {"image": images}
        if task == "segmentation":
            data["mask"] = torch.randint(num_classes, (batch, *size), generator=generator).to(device)
        else:
            data["label"] = torch.randint(num_classes, (batch,), generator=generator).to(device)
    return Workload(infer=lambda m: m(images), loss=lambda m: m.training_step(data, 0), images=batch)


def _accepts_img_size(name: str) -> bool:
    with torch.device("meta"):
        probe = create_backbone(name)
    return "img_size" in inspect.signature(type(probe).__init__).parameters


def _build_backbone(name: str, args: argparse.Namespace, size: tuple[int, int]) -> nn.Module:
    kwargs = {"num_classes": args.num_classes, "drop_path_rate": args.drop_path_rate}
    if _accepts_img_size(name):
        kwargs["img_size"] = size
    return create_backbone(name, **kwargs)


def _timm_fn(name: str) -> Callable[..., nn.Module] | None:
    """timm's own model function of our variant ``name`` (from timm's module: never a name we registered)."""
    module = TIMM_MODULES.get(backbone_family(name).__name__.rsplit(".", 1)[-1])
    return getattr(importlib.import_module(module), name, None) if module else None


def _build_timm(name: str, args: argparse.Namespace, size: tuple[int, int], ours: nn.Module) -> nn.Module:
    """timm's model of the same name and size, and copy its weights into ``ours`` (same init for both)."""
    img_size = size[0] if size[0] == size[1] else size
    model = _timm_fn(name)(img_size=img_size, num_classes=args.num_classes, drop_path_rate=args.drop_path_rate)
    ours.load_state_dict(backbone_family(name).checkpoint_filter_fn(model.state_dict(), ours), strict=True)
    return model


def _build_task(name: str, args: argparse.Namespace, size: tuple[int, int]) -> nn.Module:
    from lightning_vit.tasks import ImageClassifier, ObjectDetector, SemanticSegmenter

    common = dict(backbone=name, num_classes=args.num_classes, backbone_kwargs={"drop_path_rate": args.drop_path_rate})
    if args.task == "classification":
        if _accepts_img_size(name):
            common["backbone_kwargs"]["img_size"] = size
        return ImageClassifier(**common)
    if args.task == "segmentation":
        return SemanticSegmenter(head=args.head, **common)
    return ObjectDetector(detector=args.detector, **common)


def _backbone_of(model: nn.Module) -> nn.Module:
    """The registered backbone: the model itself, or a task's ``backbone``."""
    return model.backbone if hasattr(model, "training_step") else model


@dataclass
class Candidate:
    """One model to time: ``source`` names it in the rows (``ours``, ``timm``, ``port``, ``ours+ckpt``)."""

    source: str
    model: nn.Module
    grad_checkpointing: bool = False


def _build_candidates(
    name: str, args: argparse.Namespace, size: tuple[int, int], device: torch.device
) -> list[Candidate]:
    """Ours, then timm's (``--compare timm``) or the port of the official code (``--compare port``), and ours with
    checkpointing (``--grad_checkpointing``), all with the same weights."""
    ours = _build_task(name, args, size) if args.task else _build_backbone(name, args, size)
    candidates = [Candidate("ours", ours)]
    if args.compare == "timm":
        candidates.append(Candidate("timm", _build_timm(name, args, size, ours)))
    elif args.compare == "port":
        from lightning_vit.ports import build_port

        candidates.append(Candidate("port", build_port(ours)))
    if args.grad_checkpointing:
        ckpt = copy.deepcopy(ours)
        _backbone_of(ckpt).set_grad_checkpointing(True)
        candidates.append(Candidate("ours+ckpt", ckpt, grad_checkpointing=True))
    for c in candidates:
        c.model.to(device)
        if args.channels_last:
            c.model.to(memory_format=torch.channels_last)
        if args.compile:
            _backbone_of(c.model).compile()
    return candidates


def _step_fn(
    model: nn.Module, workload: Workload, mode: str, precision: str, device: torch.device
) -> tuple[Callable[[], None], torch.optim.Optimizer | None]:
    """One step of ``model`` (see the module docstring) and its optimizer (None for inference)."""
    dtype = PRECISIONS[precision]

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast():
                workload.infer(model)

        return infer, None

    model.train()
    params = list(model.parameters())
    fused = fused_kernel_available(params) or None  # as the tasks' default optimizer
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05, fused=fused)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def train() -> None:
        with autocast():
            loss = workload.loss(model)
        _backward_and_step(loss, optimizer, scaler)
        optimizer.zero_grad(set_to_none=True)

    return train, optimizer


def _backward_and_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """Backward and optimizer step, through the GradScaler when there is one (fp16)."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _model_name(name: str, args: argparse.Namespace) -> str:
    if args.task == "segmentation":
        return f"{args.head}/{name}"
    if args.task == "detection":
        return f"{args.detector}/{name}"
    return name


def run_models(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Rows of the backbone / task-model benchmark (see the module docstring)."""
    size = tuple(args.image_size)
    rows = []
    for name in args.backbone:
        candidates = _build_candidates(name, args, size, device)
        _progress(f"{_model_name(name, args)}: {', '.join(c.source for c in candidates)}")
        if args.task:
            workload = _task_workload(args.task, args.batch_size, size, args.num_classes, device, args.channels_last)
        else:
            workload = _backbone_workload(args.batch_size, size, args.num_classes, device, args.channels_last)
        common = {
            "benchmark": "model",
            "model": _model_name(name, args),
            "task": args.task,
            "device": device.type,
            "batch": workload.images,
            "size": list(size),
            "channels_last": args.channels_last,
            "compiled": args.compile,
            "repeats": args.repeats,
        }
        for mode in args.mode:
            for precision in args.precision:
                active = [c for c in candidates if mode == "train" or not c.grad_checkpointing]
                _progress(f"  {mode} {precision}: {args.warmup} warm-up + {args.repeats} timed steps per model")
                cell = _measure(active, workload, mode, precision, args, device)
                rows += [{**common, **row} for row in cell]
                _progress("    " + ", ".join(f"{r['source']} {r['img_s']:.1f} img/s" for r in cell))
        del candidates
        gc.collect()
    return rows


def _measure(
    candidates: list[Candidate],
    workload: Workload,
    mode: str,
    precision: str,
    args: argparse.Namespace,
    device: torch.device,
) -> list[dict]:
    """Time the candidates' steps interleaved, then one more step each for memory; one row per candidate."""
    steps, optimizers = {}, {}
    for c in candidates:
        steps[c.source], optimizers[c.source] = _step_fn(c.model, workload, mode, precision, device)
    with _quiet_task_logging():
        wall, cpu = _interleaved(steps, args.warmup, args.repeats, device)
        memory = {}
        for c in candidates:
            with PeakMemory(device) as peak, SavedActivations(c.model, mode, args.compile) as saved:
                steps[c.source]()
            memory[c.source] = peak.peak, saved.nbytes
    rows = []
    for c in candidates:
        stats = _stats(wall[c.source])
        state = _state_bytes(c.model, optimizers[c.source])
        peak, saved = memory[c.source]
        rows.append(
            {
                "source": c.source,
                "mode": mode,
                "precision": precision,
                "grad_checkpointing": c.grad_checkpointing,
                "img_s": workload.images / stats["median"] * 1e3,
                "latency_ms": stats["median"],
                "latency_p90_ms": stats["p90"],
                "latency_min_ms": stats["min"],
                "step_ms": [t * 1e3 for t in wall[c.source]],  # in round order (see _add_ratios)
                "cpu_ms": float(np.median(cpu[c.source])) * 1e3,
                "state_mb": state / 2**20,
                "step_peak_mb": None if peak is None else peak / 2**20,
                "mem_mb": None if peak is None else (state + peak) / 2**20,
                "saved_mb": None if saved is None else saved / 2**20,
            }
        )
    _add_ratios(rows, wall)
    return rows


def _add_ratios(rows: list[dict], wall: dict[str, list[float]]) -> None:
    """``ratio``, ``cpu_ratio``, ``mem_ratio`` of ``ours`` against ``timm`` or ``port`` and of ``ours+ckpt`` against
    ``ours``; ``ratio_q1`` and ``ratio_q3``, the quartiles of the round-by-round ratios (each timed round runs both
    models back to back, so a round's ratio compares steps taken under the same load)."""
    by_source = {r["source"]: r for r in rows}
    reference = "port" if "port" in by_source else "timm"
    for row in rows:
        row["vs"] = {"ours": reference, "ours+ckpt": "ours"}.get(row["source"])
        ref = by_source.get(row["vs"])
        if ref is None:
            row["vs"] = None
        row["ratio"] = row["img_s"] / ref["img_s"] if ref else None
        rounds = np.asarray(wall[ref["source"]]) / np.asarray(wall[row["source"]]) if ref else None
        row["ratio_q1"], row["ratio_q3"] = (float(q) for q in np.percentile(rounds, [25, 75])) if ref else (None, None)
        row["cpu_ratio"] = ref["cpu_ms"] / row["cpu_ms"] if ref else None
        row["mem_ratio"] = row["mem_mb"] / ref["mem_mb"] if ref and row["mem_mb"] and ref["mem_mb"] else None


@contextlib.contextmanager
def _quiet_task_logging() -> Iterator[None]:
    """A task's ``training_step`` calls ``self.log``, which warns when no Trainer is attached: expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*self\.log\(\)")
        yield


# ----------------------------------------------------------------------------------------------------------------
# Lightning's per-step overhead


def run_loop(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Rows ``lightning`` and ``plain``: seconds per training step of the same model, data and optimizer."""
    import lightning as L

    from lightning_vit.tasks import ImageClassifier
    from lightning_vit.tasks.optim import build_scheduler, param_groups

    name, precision, size = args.backbone[0], args.precision[0], tuple(args.image_size)
    steps = args.steps
    backbone_kwargs = {"drop_path_rate": args.drop_path_rate}
    if _accepts_img_size(name):
        backbone_kwargs["img_size"] = size
    lit_model = ImageClassifier(backbone=name, num_classes=args.num_classes, backbone_kwargs=backbone_kwargs)
    plain_model = copy.deepcopy(lit_model).to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(steps * args.batch_size, 3, *size, generator=generator)
    labels = torch.randint(args.num_classes, (len(images),), generator=generator)
    loader = torch.utils.data.DataLoader(_DictDataset(images, labels), batch_size=args.batch_size)
    dtype = PRECISIONS[precision]

    class StepClock(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_batch_start(self, *_) -> None:
            _sync(device)  # on CUDA, time the work done, not how fast kernels are queued
            self.starts.append(time.perf_counter())

    def lightning_run() -> list[float]:
        clock = StepClock()
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=LOOP_PRECISIONS[precision],
            max_steps=steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
        )
        trainer.fit(lit_model, train_dataloaders=loader)
        return clock.starts

    def plain_run() -> list[float]:
        optimizer = plain_model.default_optimizer(param_groups(plain_model, 0.05, plain_model.no_weight_decay()))
        scheduler = build_scheduler(optimizer, "cosine", total_steps=steps, min_lr=1e-5)
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        plain_model.train()
        starts = []
        for i, batch in enumerate(loader):
            _sync(device)
            starts.append(time.perf_counter())
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = plain_model.training_step(batch, i)
            optimizer.zero_grad(set_to_none=True)
            _backward_and_step(loss, optimizer, scaler)
            scheduler.step()
        _sync(device)
        return starts

    runs = {"lightning": lightning_run, "plain": plain_run}
    intervals: dict[str, list[float]] = {k: [] for k in runs}
    _progress(f"loop: {name}, {args.repeats} rounds of {steps} steps per runner, batch {args.batch_size}")
    with _quiet_lightning(), _quiet_task_logging():
        for r in range(args.repeats):
            for runner in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                starts = runs[runner]()
                intervals[runner].extend(np.diff(starts)[args.warmup :].tolist())
    rows = []
    for runner, values in intervals.items():
        stats = _stats(values)
        rows.append(
            {
                "benchmark": "loop",
                "model": name,
                "runner": runner,
                "precision": precision,
                "device": device.type,
                "batch": args.batch_size,
                "size": list(size),
                "s_per_step": stats["median"] / 1e3,
                "s_per_step_p90": stats["p90"] / 1e3,
                "s_per_step_min": stats["min"] / 1e3,
                "steps_timed": len(values),
            }
        )
    lightning, plain = rows
    lightning["overhead_pct"] = (lightning["s_per_step"] / plain["s_per_step"] - 1) * 100
    lightning["overhead_ms"] = (lightning["s_per_step"] - plain["s_per_step"]) * 1e3
    plain["overhead_pct"], plain["overhead_ms"] = 0.0, 0.0
    return rows


class _DictDataset(torch.utils.data.Dataset):
    """Batches as the classification DataModule gives them: dicts ``image`` and ``label``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence the Trainer's start-up report and its advice about workers and validation."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(does not have many workers|max_steps|val_dataloader)")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


# ----------------------------------------------------------------------------------------------------------------
# data pipeline


def write_jpegs(folder: Path, count: int = 64, size: tuple[int, int] = (375, 500), seed: int = 0) -> list[Path]:
    """``count`` ImageNet-like JPEGs (quality 90): colour gradients, shapes and texture, so they compress like photos.

    Returns:
        The file paths, sorted.
    """
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(count):
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)[..., None]  # (h, w, 1)
        image = rng.uniform(0, 255, 3) + ramp * rng.uniform(-200, 200, 3)
        for _ in range(12):
            center = (int(rng.integers(w)), int(rng.integers(h)))
            axes = (int(rng.integers(10, w // 3)), int(rng.integers(10, h // 3)))
            cv2.ellipse(image, center, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(0, 255, 3).tolist(), -1)
        texture = cv2.GaussianBlur(rng.normal(0, 48, (h, w, 3)).astype(np.float32), (0, 0), 0.6)
        image = np.clip(image + texture, 0, 255).astype(np.uint8)
        path = folder / f"synthetic_{i:03d}.JPEG"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def run_data(args: argparse.Namespace) -> list[dict]:
    """Rows ``ours`` and ``timm`` per augmentation setting: decode + training transforms, images/s of one worker."""
    import cv2
    from PIL import Image
    from timm.data import create_transform

    from lightning_vit.datamodules._io import IMAGE_EXTENSIONS, DatasetError, read_image
    from lightning_vit.datamodules.transforms import classification_train_transform

    size = args.image_size[0]
    with contextlib.ExitStack() as stack:
        if args.data_root:
            root = Path(args.data_root)
            if not root.is_dir():
                raise DatasetError(f"--data_root: {root} is not a folder (expected a folder of JPEG or PNG images)")
            paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not paths:
                raise DatasetError(f"--data_root: {root} holds no images (.jpg, .jpeg, .png, ...)")
        else:
            paths = write_jpegs(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        threads = torch.get_num_threads(), cv2.getNumThreads()
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        stack.callback(torch.set_num_threads, threads[0])
        stack.callback(cv2.setNumThreads, threads[1])
        kb = np.mean([p.stat().st_size for p in paths]) / 1024
        _progress(f"data: {len(paths)} images ({kb:.0f} kB on average), {args.repeats} passes per pipeline")
        rows = []
        for setting, (our_options, their_options) in DATA_SETTINGS.items():
            ours = classification_train_transform(size, interpolation="bicubic", **our_options)
            theirs = create_transform(
                size, is_training=True, interpolation="bicubic", color_jitter=None, **their_options
            )

            def ours_pass(transform=ours) -> None:
                for p in paths:
                    _check_sample(transform(image=read_image(p))["image"], size)

            def timm_pass(transform=theirs) -> None:
                for p in paths:
                    with Image.open(p) as image:
                        _check_sample(transform(image.convert("RGB")), size)

            times, _ = _interleaved({"ours": ours_pass, "timm": timm_pass}, 1, args.repeats, torch.device("cpu"))
            for source, label in (("ours", "opencv+albumentations"), ("timm", "PIL+timm create_transform")):
                seconds = float(np.median(times[source]))
                rows.append(
                    {
                        "benchmark": "data",
                        "pipeline": source,
                        "implementation": label,
                        "setting": setting,
                        "size": [size, size],
                        "images": len(paths),
                        "avg_file_kb": float(kb),
                        "img_s": len(paths) / seconds,
                        "ms_per_img": seconds / len(paths) * 1e3,
                        "repeats": args.repeats,
                    }
                )
            ours_row, timm_row = rows[-2:]
            ours_row.update(vs="timm", ratio=ours_row["img_s"] / timm_row["img_s"])
            timm_row.update(vs=None, ratio=None)
    return rows


def _check_sample(image: torch.Tensor, size: int) -> None:
    if image.shape != (3, size, size) or image.dtype != torch.float32:
        raise RuntimeError(f"a training transform gave {tuple(image.shape)} {image.dtype}, not (3, {size}, {size})")


# ----------------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_vit benchmark",
        description="Throughput, latency and memory of backbones and task models; Lightning's per-step overhead "
        "(--loop); the data pipeline (--data). See the lightning_vit.benchmark docstring for how to read the "
        "numbers.",
    )
    parser.add_argument("--backbone", nargs="+", action="extend", default=[], help="registered backbone name(s)")
    parser.add_argument("--task", choices=TASKS, help="time a task model built on the backbone instead")
    parser.add_argument("--head", default="upernet", choices=("upernet", "fpn"), help="segmentation head")
    parser.add_argument("--detector", default="mask_rcnn", choices=("mask_rcnn", "retinanet"), help="detector")
    parser.add_argument("--num_classes", type=int, help="default: 1000, 150 (segmentation), 80 (detection)")
    parser.add_argument("--batch_size", type=int, help="images per step (default: 8; 1 for detection)")
    parser.add_argument(
        "--image_size", type=int, nargs="+", metavar="H [W]", help="default: 224; 512 segmentation; 800 1216 detection"
    )
    parser.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=["fp32"])
    parser.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model (or per --loop round)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model (--loop: rounds)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--channels_last", action="store_true", help="channels-last model and input")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone(s) in place")
    parser.add_argument(
        "--grad_checkpointing", action="store_true", help="also time training with gradient checkpointing"
    )
    parser.add_argument("--drop_path_rate", type=float, default=0.0, help="stochastic depth of every model built")
    parser.add_argument(
        "--compare",
        choices=("timm", "port"),
        help="also time timm's model of the same name (Swin, CoaT) or a straightforward port of the official code "
        "(ScalableViT, PatchConvNet; lightning_vit.ports)",
    )
    parser.add_argument("--loop", action="store_true", help="Lightning Trainer vs a plain loop, s/step")
    parser.add_argument("--steps", type=int, default=20, help="--loop: steps per round")
    parser.add_argument("--data", action="store_true", help="decode + training transforms, ours vs timm's")
    parser.add_argument("--data_root", help="--data: a folder of images (default: generated JPEGs)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': to stdout)")
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """Fill the defaults that depend on other arguments; ``parser.error`` on inconsistent ones."""
    if args.loop and args.data:
        parser.error("--loop and --data are separate benchmarks: give one")
    if not args.data and not args.backbone:
        parser.error("--backbone is required (e.g. --backbone swin_tiny_patch4_window7_224)")
    for name in args.backbone:
        try:
            backbone_family(name)
        except ValueError as err:
            parser.error(f"--backbone: {err}")
    if args.compare == "timm":
        if args.task or args.loop or args.data:
            parser.error("--compare timm times backbones only (not with --task, --loop or --data)")
        missing = [n for n in args.backbone if _timm_fn(n) is None]
        if missing:
            examples = "swin_tiny_patch4_window7_224, coat_lite_tiny, coat_tiny"
            parser.error(
                f"--compare timm: timm has no model named {', '.join(missing)}; timm's counterparts exist for the "
                f"Swin and CoaT variants (e.g. {examples}), not for test_* variants, ScalableViT or PatchConvNet"
            )
    size = args.image_size or DEFAULT_SIZE[None if args.loop or args.data else args.task]
    if len(size) not in (1, 2) or min(size) < 32:
        parser.error(f"--image_size takes H or H W, each >= 32, got {size}")
    args.image_size = [size[0], size[-1]]
    if args.compare == "port":
        _check_ports(parser, args)
    if args.data and args.image_size[0] != args.image_size[1]:
        parser.error("--data crops squares: give one --image_size")
    for option in ("num_classes", "batch_size", "threads"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be >= 1, got {getattr(args, option)}")
    args.num_classes = args.num_classes or DEFAULT_CLASSES[args.task]
    args.batch_size = args.batch_size or (1 if args.task == "detection" else 8)
    if args.warmup < 0 or args.repeats < 1:
        parser.error("--warmup must be >= 0 and --repeats >= 1")
    if args.compile and args.warmup < 1:
        parser.error("--compile needs --warmup >= 1, so that compilation is not timed")
    if args.loop and (len(args.backbone) > 1 or len(args.precision) > 1):
        parser.error("--loop times one --backbone at one --precision")
    if args.data_root and not args.data:
        parser.error("--data_root is the folder of images of --data: give --data too")
    if args.grad_checkpointing and "train" not in args.mode:
        parser.error("--grad_checkpointing is timed in training: add --mode train")
    if args.json not in (None, "-") and not Path(args.json).parent.is_dir():
        parser.error(f"--json: folder {Path(args.json).parent} does not exist")
    if args.loop and args.steps < args.warmup + 2:
        parser.error(f"--loop: --steps {args.steps} leaves no timed step after --warmup {args.warmup}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if "fp16" in args.precision and device.type != "cuda":
        parser.error("--precision fp16 needs --device cuda (CPUs run fp32 and bf16)")
    return device


def _check_ports(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` unless every backbone has a port that takes ``--image_size`` (tried on the meta device)."""
    from lightning_vit.ports import PORTS, build_port

    if args.task or args.loop or args.data:
        parser.error("--compare port times backbones only (not with --task, --loop or --data)")
    for name in args.backbone:
        with torch.device("meta"):
            ours = create_backbone(name)
            if type(ours) not in PORTS:
                known = ", ".join(cls.__name__ for cls in PORTS)
                parser.error(f"--compare port: {name} is a {type(ours).__name__}; ports exist for {known}")
            try:
                build_port(ours)(torch.empty(1, 3, *args.image_size))
            except ValueError as err:
                parser.error(f"--compare port: --image_size {args.image_size[0]} {args.image_size[1]}: {err}")


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on."""
    cpu, flags = platform.processor() or platform.machine(), []
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # the vector unit torch's kernels use, and what bf16 runs on: AMX, avx512_bf16, or emulation (no bf16 kernels)
    isa = [torch.backends.cpu.get_cpu_capability(), *(f for f in ("avx512_bf16", "amx_bf16") if f in flags)]
    info = {
        "cpu": cpu,
        "isa": "+".join(isa),
        "bf16_kernels": "yes" if cpu_bf16_kernels() else "no",
        "cpus": cpus,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fmt(value: object, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return format(value, spec)


MODEL_COLUMNS = [
    ("model", "model", ""), ("source", "source", ""), ("mode", "mode", ""), ("prec", "precision", ""),
    ("batch", "batch", "d"), ("size", "size", ""), ("img/s", "img_s", ".2f"), ("ms", "latency_ms", ".1f"),
    ("p90", "latency_p90_ms", ".1f"), ("min", "latency_min_ms", ".1f"), ("cpu ms", "cpu_ms", ".1f"),
    ("mem MB", "mem_mb", ".0f"), ("saved MB", "saved_mb", ".0f"), ("vs", "vs", ""), ("ratio", "ratio", ".2f"),
    ("q1", "ratio_q1", ".2f"), ("q3", "ratio_q3", ".2f"), ("cpu ratio", "cpu_ratio", ".2f"),
    ("mem ratio", "mem_ratio", ".2f"),
]  # fmt: skip
LOOP_COLUMNS = [
    ("model", "model", ""), ("runner", "runner", ""), ("prec", "precision", ""), ("batch", "batch", "d"),
    ("size", "size", ""), ("s/step", "s_per_step", ".4f"), ("p90", "s_per_step_p90", ".4f"),
    ("min", "s_per_step_min", ".4f"), ("steps", "steps_timed", "d"), ("overhead %", "overhead_pct", "+.1f"),
    ("overhead ms", "overhead_ms", "+.2f"),
]  # fmt: skip
DATA_COLUMNS = [
    ("pipeline", "implementation", ""), ("setting", "setting", ""), ("size", "size", ""), ("images", "images", "d"),
    ("img/s", "img_s", ".1f"), ("ms/img", "ms_per_img", ".2f"), ("vs", "vs", ""), ("ratio", "ratio", ".2f"),
]  # fmt: skip


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table (Markdown-compatible) of ``rows``."""
    cells = [[header for header, _, _ in columns]]
    cells += [[_fmt(row.get(key), spec) for _, key, spec in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark given by ``argv`` (as on the command line); print the table and return the rows."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    device = _validate(parser, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    machine = machine_info(device)
    if args.data:
        machine["torch_threads"] = 1  # one thread, as in one DataLoader worker (see run_data)
        rows, columns = run_data(args), DATA_COLUMNS
    elif args.loop:
        rows, columns = run_loop(args, device), LOOP_COLUMNS
    else:
        rows, columns = run_models(args, device), MODEL_COLUMNS
    out = sys.stderr if args.json == "-" else sys.stdout
    described = ", ".join(f"{k} {v}" for k, v in machine.items())
    print(f"machine: {described}\n\n{format_table(rows, columns)}", file=out)
    if args.json:
        text = json.dumps({"machine": machine, "argv": argv, "rows": rows}, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return rows
