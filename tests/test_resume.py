"""A fit killed with SIGKILL part-way into an epoch and resumed with ``--ckpt_path last`` ends with exactly the
weights, optimizer, scheduler and EMA state of the uninterrupted run; two runs with one seed are identical."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
import yaml
from conftest import CONFIGS

STEPS_PER_EPOCH = 3  # 13 training images, batches of 4, the last partial batch dropped
KILL_AT_STEP = 5  # as the third (last) batch of the second epoch starts; the last checkpoint holds 5 steps


class KillAtStep(L.Callback):
    """SIGKILLs its own process as the training step ``step`` starts: no hook, no cleanup, like a lost node."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _config(
    tmp_path: Path, data: Path, name: str, workers: int, kill: int | None = None, every_step: bool = True
) -> Path:
    """The demo recipe on tiny data, with every random draw a run makes: RandAugment, random erasing, mixup /
    cutmix, drop path; EMA weights and a checkpoint every step (``every_step``) or at each epoch end; ``kill``: the
    step at which the run SIGKILLs itself."""
    config = yaml.safe_load((CONFIGS / "demo" / "coat_lite.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(precision="32-true", max_epochs=3, num_sanity_val_steps=0, enable_progress_bar=False)
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": "runs", "name": name},
    }
    last = {"filename": "last", "every_n_train_steps": 1} if every_step else {"filename": "last"}
    trainer["callbacks"] = [
        {"class_path": "lightning_vit.callbacks.AtomicModelCheckpoint", "init_args": last},
        {"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.9}},
    ]
    if kill is not None:
        trainer["callbacks"].append({"class_path": "test_resume.KillAtStep", "init_args": {"step": kill}})
    model = config["model"]["init_args"]
    model.update(backbone="test_coat_lite", backbone_kwargs={"drop_path_rate": 0.2})
    config["data"]["init_args"].update(
        root=str(data), image_size=32, batch_size=4, num_workers=workers, auto_augment="rand-m9-mstd0.5-inc1",
        re_prob=0.5, mixup=0.8, cutmix=1.0,
    )  # fmt: skip
    path = tmp_path / f"{name}{'_kill' if kill is not None else ''}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(tmp_path: Path, config: Path, *args: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lightning_vit", "fit", "--config", str(config), *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600).returncode


def _last(tmp_path: Path, name: str) -> dict:
    return torch.load(tmp_path / "runs" / name / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)


def _metrics(tmp_path: Path, name: str) -> list[dict[str, str]]:
    return _rows(tmp_path / "runs" / name / "version_0" / "metrics.csv")


def _final_validation(tmp_path: Path, name: str) -> dict[str, str]:
    """The last validation row of a run's metrics.csv (the values as logged, compared as text)."""
    with (tmp_path / "runs" / name / "version_0" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_loss")]
    return {k: v for k, v in rows[-1].items() if k.startswith("val_") or k == "epoch"}


def _assert_equal(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(image_folder: Path, tmp_path: Path) -> None:
    assert _fit(tmp_path, _config(tmp_path, image_folder, "whole", workers=0)) == 0
    killed = _fit(tmp_path, _config(tmp_path, image_folder, "resumed", workers=2, kill=KILL_AT_STEP))
    assert killed == -signal.SIGKILL
    partial = _last(tmp_path, "resumed")
    assert partial["global_step"] == KILL_AT_STEP and partial["epoch"] == 1  # mid-epoch: 2 of 3 batches done

    assert _fit(tmp_path, _config(tmp_path, image_folder, "resumed", workers=2), "--ckpt_path", "last") == 0
    whole, resumed = _last(tmp_path, "whole"), _last(tmp_path, "resumed")
    assert whole["global_step"] == resumed["global_step"] == 3 * STEPS_PER_EPOCH
    assert not (tmp_path / "runs" / "resumed" / "version_1").exists()  # resumed in its own run directory
    # with EMA, Lightning keeps the averaged weights in state_dict and the trained ones in current_model_state
    live, ema = whole["current_model_state"], whole["state_dict"]
    assert any(not torch.equal(live[k], ema[k]) for k in live)
    for key in ("state_dict", "current_model_state", "averaging_state", "optimizer_states", "lr_schedulers"):
        _assert_equal(resumed[key], whole[key], key)
    _assert_equal(resumed["callbacks"]["EMAWeightAveraging"], whole["callbacks"]["EMAWeightAveraging"], "ema")
    # the same seed and config give the same validation metrics, to the last digit
    final = _final_validation(tmp_path, "whole")
    assert final["epoch"] == "2" and {"val_acc1", "val_loss"} <= final.keys()
    assert _final_validation(tmp_path, "resumed") == final
    # metrics.csv holds the whole run once: the killed process's rows up to its checkpoint, then the resumed ones
    # (epoch 1's training accuracy covers only the batches after the resume, as Lightning's epoch metrics do)
    whole_rows, resumed_rows = _metrics(tmp_path, "whole"), _metrics(tmp_path, "resumed")
    assert [(r["epoch"], r["step"]) for r in resumed_rows] == [(r["epoch"], r["step"]) for r in whole_rows]
    assert [r for r in resumed_rows if r["val_loss"]] == [r for r in whole_rows if r["val_loss"]]
    # and the run really was random: a different seed gives other weights
    assert _fit(tmp_path, _config(tmp_path, image_folder, "other", workers=0), "--seed_everything", "1") == 0
    other = _last(tmp_path, "other")["state_dict"]
    assert any(not torch.equal(other[k], whole["state_dict"][k]) for k in other)


def test_resume_from_an_epoch_end_checkpoint_with_workers_equals_an_uninterrupted_run(
    image_folder: Path, tmp_path: Path
) -> None:
    """Killed as epoch 1 starts, resumed from the checkpoint of epoch 0's end, with DataLoader workers: epoch 1 is
    read in its own order (Lightning creates the iterator, and the workers start reading, before ``set_epoch``)."""
    assert _fit(tmp_path, _config(tmp_path, image_folder, "whole", workers=0, every_step=False)) == 0
    config = _config(tmp_path, image_folder, "resumed", workers=2, kill=STEPS_PER_EPOCH, every_step=False)
    assert _fit(tmp_path, config) == -signal.SIGKILL
    partial = _last(tmp_path, "resumed")
    assert partial["global_step"] == STEPS_PER_EPOCH and partial["epoch"] == 0  # epoch 0 ended, nothing after
    config = _config(tmp_path, image_folder, "resumed", workers=2, every_step=False)
    assert _fit(tmp_path, config, "--ckpt_path", "last") == 0
    whole, resumed = _last(tmp_path, "whole"), _last(tmp_path, "resumed")
    assert whole["global_step"] == resumed["global_step"] == 3 * STEPS_PER_EPOCH
    for key in ("state_dict", "current_model_state", "optimizer_states"):
        _assert_equal(resumed[key], whole[key], key)
    assert _metrics(tmp_path, "resumed") == _metrics(tmp_path, "whole")  # every epoch's row, each once


def test_continue_logs_keeps_the_rows_before_the_checkpoint_and_purges_tensorboard_after_it(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from lightning_vit.cli import continue_logs

    run = tmp_path / "runs" / "demo" / "version_0"
    run.mkdir(parents=True)
    rows = [{"epoch": str(s // 4), "step": str(s), "train_loss": f"{1 / (s + 1):.6f}"} for s in range(10)]
    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", "train_loss"])
        writer.writeheader()
        writer.writerows(rows)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"global_step": 6}, ckpt)  # the lost process logged steps 6-9 after its last checkpoint
    loggers = [
        CSVLogger(tmp_path / "runs", name="demo", version="version_0"),
        TensorBoardLogger(tmp_path / "runs", name="demo", version="version_0"),
    ]
    trainer = L.Trainer(logger=loggers, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False)
    continue_logs(trainer, ckpt)
    assert _rows(run / "metrics.csv") == rows[:6]
    assert loggers[1]._kwargs["purge_step"] == 6
    loggers[0].log_metrics({"train_loss": 0.5}, step=6)  # the resumed run appends to the kept rows
    loggers[0].save()
    assert [r["step"] for r in _rows(run / "metrics.csv")] == [str(s) for s in range(7)]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _ddp(config: Path) -> Path:
    """``config`` under DDP, two CPU processes of batch 2 (13 images: 3 steps per epoch)."""
    settings = yaml.safe_load(config.read_text())
    settings["trainer"].update(strategy="ddp", devices=2)
    settings["data"]["init_args"]["batch_size"] = 2
    config.write_text(yaml.safe_dump(settings))
    return config


def test_ddp_run_with_ema_resumed_from_an_epoch_end_checkpoint_equals_an_uninterrupted_run(
    image_folder: Path, tmp_path: Path
) -> None:
    """The ImageNet recipes' combination: DDP, EMA (which deep-copies the module at setup: the CLI's optimizer
    factory once made that fail under DDP) and DataLoader workers, killed as epoch 1 starts."""
    assert _fit(tmp_path, _ddp(_config(tmp_path, image_folder, "whole", workers=0, every_step=False))) == 0
    killed = _ddp(_config(tmp_path, image_folder, "resumed", workers=1, kill=STEPS_PER_EPOCH, every_step=False))
    assert _fit(tmp_path, killed) == -signal.SIGKILL
    assert _last(tmp_path, "resumed")["global_step"] == STEPS_PER_EPOCH
    resumed = _ddp(_config(tmp_path, image_folder, "resumed", workers=1, every_step=False))
    assert _fit(tmp_path, resumed, "--ckpt_path", "last") == 0
    whole, resumed = _last(tmp_path, "whole"), _last(tmp_path, "resumed")
    assert whole["global_step"] == resumed["global_step"] == 3 * STEPS_PER_EPOCH
    for key in ("state_dict", "current_model_state", "optimizer_states"):
        _assert_equal(resumed[key], whole[key], key)
    assert _metrics(tmp_path, "resumed") == _metrics(tmp_path, "whole")
