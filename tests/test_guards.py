"""A NaN loss never reaches the weights or a checkpoint: the guard stops the run or skips the step."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lightning_vit.callbacks import AtomicModelCheckpoint, NonFiniteError, NonFiniteGuard
from lightning_vit.callbacks.guards import weights_are_finite
from lightning_vit.tasks import ImageClassifier

POISONED_STEP = 2


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    samples = [{"image": torch.randn(3, 32, 32, generator=g), "label": i % 3} for i in range(16)]
    return DataLoader(samples, batch_size=4)


def _model(trainer_ref: list, poisoned: bool = True) -> ImageClassifier:
    """A classifier whose input turns NaN at ``POISONED_STEP`` (the loss and every gradient follow)."""
    torch.manual_seed(0)
    model = ImageClassifier(backbone="test_coat_lite", num_classes=3, scheduler="constant")
    model.configure_models()
    if not poisoned:
        return model

    def poison(module, args):
        if module.training and trainer_ref[0].global_step == POISONED_STEP:
            return (args[0] * float("nan"),)

    model.backbone.register_forward_pre_hook(poison)
    return model


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Recorder(L.Callback):
    """Weights before and after every training batch, by global step."""

    def __init__(self) -> None:
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = _snapshot(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step - 1] = _snapshot(pl_module)


def _trainer(tmp_path: Path, *callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=True,
        callbacks=list(callbacks),
    )


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_stop_keeps_good_weights_and_checkpoint(tmp_path: Path) -> None:
    ref: list = []
    model = _model(ref)
    last = AtomicModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last", every_n_train_steps=1)
    recorder = _Recorder()
    trainer = _trainer(tmp_path, NonFiniteGuard("stop"), last, recorder)
    ref.append(trainer)
    with pytest.raises(NonFiniteError, match=f"global step {POISONED_STEP}.*learning rate"):
        trainer.fit(model, _loader())
    assert weights_are_finite(model)
    assert _equal(_snapshot(model), recorder.before[POISONED_STEP])  # the poisoned step changed nothing
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == POISONED_STEP
    assert _equal(saved["state_dict"], recorder.before[POISONED_STEP])


def test_skip_drops_the_step_and_goes_on(tmp_path: Path) -> None:
    ref: list = []
    model = _model(ref)
    guard, recorder = NonFiniteGuard("skip"), _Recorder()
    trainer = _trainer(tmp_path, guard, recorder)
    ref.append(trainer)
    trainer.fit(model, _loader())
    assert guard.skipped == 1
    assert _equal(recorder.after[POISONED_STEP], recorder.before[POISONED_STEP])
    assert not _equal(recorder.after[POISONED_STEP + 1], recorder.before[POISONED_STEP + 1])  # training went on
    assert weights_are_finite(model)
    steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert steps == {trainer.global_step - 1}  # the skipped step left AdamW's state alone


def test_skip_stops_after_too_many_in_a_row(tmp_path: Path) -> None:
    ref: list = []
    model = _model(ref)
    model.backbone.register_forward_pre_hook(lambda m, args: (args[0] * float("nan"),) if m.training else None)
    trainer = _trainer(tmp_path, NonFiniteGuard("skip", max_consecutive=3))
    ref.append(trainer)
    with pytest.raises(NonFiniteError, match="3 non-finite steps in a row"):
        trainer.fit(model, _loader())
    assert weights_are_finite(model)


def test_checkpoint_refuses_non_finite_weights(tmp_path: Path) -> None:
    ref: list = []
    model = _model(ref, poisoned=False)
    ckpt = AtomicModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = _trainer(tmp_path, ckpt)
    ref.append(trainer)
    trainer.fit(model, _loader())
    before = (tmp_path / "ckpt" / "last.ckpt").read_bytes()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    ckpt._save_checkpoint(trainer, str(tmp_path / "ckpt" / "last.ckpt"))
    assert (tmp_path / "ckpt" / "last.ckpt").read_bytes() == before


def test_bad_action_is_refused() -> None:
    with pytest.raises(ValueError, match="non_finite.action"):
        NonFiniteGuard("ignore")
