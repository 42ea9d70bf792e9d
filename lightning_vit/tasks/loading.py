"""Rebuild a task from a checkpoint written by ``python -m lightning_vit fit``, without its config or dataset.

The LightningCLI stores the task's class path (``_class_path``) and constructor arguments in the checkpoint's
``hyper_parameters``; a checkpoint saved by a plain ``Trainer`` has the arguments only, and the task is then the one
whose constructor takes all of them. The file is read with ``torch.load(weights_only=True)``: a pickle that would
build arbitrary objects is refused with the names of those objects. The state_dict is loaded strictly, so a
checkpoint of another architecture is an error rather than a half-initialised model.
"""

from __future__ import annotations

import inspect
import pickle
import sys
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.cli import instantiate_module

from lightning_vit.backbones.pretrained import PretrainedError
from lightning_vit.tasks.base import BaseTask
from lightning_vit.tasks.classification import ImageClassifier
from lightning_vit.tasks.detection import ObjectDetector
from lightning_vit.tasks.segmentation import SemanticSegmenter

__all__ = ["TASKS", "load_task", "read_lightning_checkpoint", "task_from_checkpoint"]

TASKS: tuple[type[BaseTask], ...] = (ImageClassifier, SemanticSegmenter, ObjectDetector)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def read_lightning_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict of ``path``, read with ``weights_only=True`` (memory-mapped).

    Raises:
        PretrainedError: the file is missing, unreadable, holds objects ``weights_only`` refuses, or is not a
            Lightning checkpoint (no ``state_dict`` and ``hyper_parameters``).
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"ckpt_path: {path} is not a file (expected a .ckpt written by `lightning_vit fit`)")
    try:
        # memory-mapped where the format allows (torch.save's zip): tensors are read when used, not all up front
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):  # neither torch.save's zip archive nor a legacy pickle of tensors
            message = f"ckpt_path: {path} is not a readable PyTorch checkpoint (not a zip archive as torch.save writes)"
            raise PretrainedError(message) from err
        unsafe = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        raise PretrainedError(
            f"ckpt_path: refusing to load {path}: it holds Python objects that weights-only loading does not build "
            f"({unsafe}); expected a checkpoint whose hyperparameters are plain values, as the CLI writes them"
        ) from err
    except Exception as err:  # a file that is no pickle fails anywhere in the unpickler (IndexError, KeyError...)
        reason = f"{type(err).__name__}: {_first_line(err)}"
        raise PretrainedError(f"ckpt_path: {path} is not a readable PyTorch checkpoint ({reason})") from err
    if not (isinstance(checkpoint, dict) and {"state_dict", "hyper_parameters"} <= checkpoint.keys()):
        keys = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise PretrainedError(
            f"ckpt_path: {path} is not a Lightning checkpoint of a lightning_vit task (expected the keys "
            f"'state_dict' and 'hyper_parameters', found {keys})"
        )
    return checkpoint


def _init_params(cls: type[BaseTask]) -> set[str]:
    """Constructor argument names of a task, its own and :class:`BaseTask`'s (reached through ``**kwargs``)."""
    names = set(inspect.signature(cls).parameters) | set(inspect.signature(BaseTask).parameters)
    return names - {"kwargs"}


def _task_class(hparams: dict, path: Path) -> type[BaseTask]:
    """The class named by ``_class_path``, else the task whose constructor takes every stored argument."""
    class_path = hparams.get("_class_path")
    if class_path is not None:
        module, _, name = str(class_path).rpartition(".")
        cls = getattr(sys.modules.get(module), name, None)  # only classes already imported: a checkpoint runs no code
        if not (isinstance(cls, type) and issubclass(cls, BaseTask) and not inspect.isabstract(cls)):
            expected = ", ".join(f"{c.__module__}.{c.__name__}" for c in TASKS)
            raise PretrainedError(
                f"ckpt_path: {path}: unknown task {class_path} (expected {expected} or another imported BaseTask)"
            )
        return cls
    keys = {k for k in hparams if not k.startswith("_")}
    fits = [cls for cls in TASKS if keys <= _init_params(cls)]
    if not fits:
        raise PretrainedError(
            f"ckpt_path: {path}: no task takes the stored hyperparameters {sorted(keys)} (expected those of "
            f"{', '.join(c.__name__ for c in TASKS)})"
        )
    return min(fits, key=lambda cls: len(_init_params(cls)))  # the most specific: classification's fit the others


def task_from_checkpoint(checkpoint: dict, path: str | Path = "checkpoint") -> BaseTask:
    """Build the task of a checkpoint dict (from :func:`read_lightning_checkpoint`) in eval mode.

    The backbone is not initialised from the stored ``pretrained`` source (a file or URL that may be gone): the
    checkpoint's own weights replace it. Under ``EMAWeightAveraging`` those are the averaged weights.

    Args:
        checkpoint: the checkpoint dict.
        path: where it came from, for error messages.
    """
    path = Path(path)
    hparams = dict(checkpoint["hyper_parameters"])
    cls = _task_class(hparams, path)
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_")}
    if "pretrained" in kwargs:
        kwargs["pretrained"] = None
    try:
        task = instantiate_module(cls, kwargs)  # builds the nested ``optimizer: {class_path, init_args}`` as the CLI
    except Exception as err:  # jsonargparse and the tasks' own checks raise many error types
        message = f"ckpt_path: {path}: cannot build {cls.__name__} from its hyperparameters: {err}"
        raise PretrainedError(message) from err
    task.on_load_checkpoint(checkpoint)
    try:
        task.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as err:
        raise PretrainedError(f"ckpt_path: {path}: the weights do not fit {cls.__name__}: {err}") from err
    return task.eval()


def load_task(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> BaseTask:
    """The task of a Lightning checkpoint, with its weights, in eval mode.

    Args:
        ckpt_path: a ``.ckpt`` written by ``python -m lightning_vit fit`` (or any ``Trainer`` over these tasks).
        map_location: where to put the tensors, as in ``torch.load``.

    Raises:
        PretrainedError: the file is missing or not such a checkpoint, its task is unknown, or its weights do not
            fit the task its hyperparameters describe.
    """
    return task_from_checkpoint(read_lightning_checkpoint(ckpt_path, map_location), ckpt_path)
