"""Fine-tuning aids: layer-wise lr decay, head lr, lr scaling and schedule on top, frozen backbone and its resume."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from conftest import CONFIGS
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader

from lightning_vit.backbones import create_backbone
from lightning_vit.cli import main
from lightning_vit.tasks import ImageClassifier, ObjectDetector, SemanticSegmenter
from lightning_vit.tasks.optim import backbone_layer_ids

LR, WD = 1e-3, 0.05  # the tasks' default optimizer: AdamW(lr=1e-3, weight_decay=0.05)

# Each backbone's block order: entry i lists the parameter-name prefixes of layer i (classification variants).
STAGES = [
    [f"cls_token{i}", f"patch_embed{i}.", f"cpe{i}.", f"crpe{i}."] for i in range(1, 5)
]  # CoaT: a stage's embedding, then its blocks
BLOCK_ORDER = {
    "test_swin": [
        ["patch_embed."],
        ["layers.0.blocks.0."],
        ["layers.0.blocks.1."],
        ["layers.1.downsample.", "layers.1.blocks.0."],
        ["layers.1.blocks.1."],
        ["layers.2.downsample.", "layers.2.blocks.0."],
        ["layers.2.blocks.1."],
        ["layers.3.downsample.", "layers.3.blocks.0."],
        ["layers.3.blocks.1.", "norm."],
    ],
    "test_scalable_vit": [
        ["patch_embeds.0."],
        ["pos_block.0.", "stages.0.0."],
        ["stages.0.1."],
        ["patch_embeds.1.", "pos_block.1.", "stages.1.0."],
        ["stages.1.1."],
        ["patch_embeds.2.", "pos_block.2.", "stages.2.0."],
        ["stages.2.1."],
        ["patch_embeds.3.", "pos_block.3.", "stages.3.0."],
        ["stages.3.1.", "norm."],
    ],
    "test_patchconvnet": [["cls_token", "patch_embed."], ["blocks.0."], ["blocks.1.", "blocks_token_only.", "norm."]],
    "test_coat_lite": [
        *(layer for i in range(3) for layer in (STAGES[i], [f"serial_blocks{i + 1}.0."])),
        STAGES[3],
        ["serial_blocks4.0."],
        ["serial_blocks4.1.", "norm4."],
    ],
    "test_coat": [
        *(layer for i in range(4) for layer in (STAGES[i], [f"serial_blocks{i + 1}.0."])),
        ["parallel_blocks.0.", "norm2.", "norm3.", "norm4.", "aggregate."],
    ],
}


@pytest.mark.parametrize(
    "name",
    [
        "test_swin",
        "test_scalable_vit",
        "test_patchconvnet",
        "test_coat_lite",
        "test_coat",
    ],
)
def test_group_matcher_gives_block_order(name: str) -> None:
    model = create_backbone(name, num_classes=3)
    ids = backbone_layer_ids(model)
    names = [n for n, _ in model.named_parameters()]
    assert {n for n in names if n not in ids} == {n for n in names if n.startswith("head.")} != set()
    expected = {}
    for layer, prefixes in enumerate(BLOCK_ORDER[name]):
        for n in names:
            if any(n == p or n.startswith(p) for p in prefixes):
                expected[n] = layer
    assert ids == expected


def _attach(task: L.LightningModule, batch_size: int = 2, steps: int = 10) -> torch.optim.Optimizer:
    """``configure_optimizers`` under a stand-in trainer; returns the optimizer."""
    task.trainer = SimpleNamespace(
        estimated_stepping_batches=steps,
        max_epochs=1,
        datamodule=SimpleNamespace(batch_size=batch_size),
        world_size=1,
        accumulate_grad_batches=1,
    )
    return task.configure_optimizers()["optimizer"]


def _per_param(task: L.LightningModule, optimizer: torch.optim.Optimizer, key: str) -> dict[str, float]:
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(group_of) == sum(1 for _ in task.parameters())  # every parameter in exactly one group
    return {n: group_of[id(p)][key] for n, p in task.named_parameters()}


def _all(values: Iterable[float], expected: float) -> bool:
    values = list(values)
    return bool(values) and values == pytest.approx([expected] * len(values))


def test_layer_decay_swin_classifier() -> None:
    task = ImageClassifier("test_swin", num_classes=3, scheduler="constant", layer_decay=0.5)
    optimizer = _attach(task)
    lr = _per_param(task, optimizer, "lr")
    assert lr["backbone.patch_embed.proj.weight"] == pytest.approx(LR * 0.5**9)
    assert lr["backbone.layers.0.blocks.0.attn.qkv.weight"] == pytest.approx(LR * 0.5**8)
    assert lr["backbone.layers.1.downsample.reduction.weight"] == pytest.approx(LR * 0.5**6)
    assert lr["backbone.layers.3.blocks.1.mlp.fc2.weight"] == pytest.approx(LR * 0.5)
    assert lr["backbone.norm.weight"] == pytest.approx(LR * 0.5)
    assert lr["backbone.head.fc.weight"] == lr["backbone.head.fc.bias"] == pytest.approx(LR)
    assert len({round(v, 12) for v in lr.values()}) == 10
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(LR * group["lr_scale"])

    # weight decay exactly as without layer decay: none on 1-D, biases and the position bias tables
    plain = ImageClassifier("test_swin", num_classes=3, scheduler="constant")
    plain.load_state_dict(task.state_dict())
    plain_optimizer = _attach(plain)
    assert len(plain_optimizer.param_groups) == 2
    assert _per_param(task, optimizer, "weight_decay") == _per_param(plain, plain_optimizer, "weight_decay")
    wd = _per_param(task, optimizer, "weight_decay")
    assert wd["backbone.layers.0.blocks.0.attn.relative_position_bias_table"] == 0.0
    assert wd["backbone.patch_embed.proj.bias"] == 0.0 and wd["backbone.patch_embed.proj.weight"] == WD
    assert _all(_per_param(plain, plain_optimizer, "lr").values(), LR)


def test_layer_decay_head_lr_and_batch_scaling_segmenter() -> None:
    task = SemanticSegmenter(
        "test_scalable_vit", num_classes=4, scheduler="constant", layer_decay=0.75, head_lr=4e-3, lr_batch_size=4,
    )  # fmt: skip
    lr = _per_param(task, _attach(task, batch_size=8), "lr")  # batch 8 for lr_batch_size 4: every lr x2
    assert lr["backbone.patch_embeds.0.proj.weight"] == pytest.approx(2 * LR * 0.75**9)
    assert lr["backbone.pos_block.0.proj.0.weight"] == pytest.approx(2 * LR * 0.75**8)
    assert lr["backbone.stages.3.1.mlp.fc1.weight"] == pytest.approx(2 * LR * 0.75)
    heads = {n: v for n, v in lr.items() if not n.startswith("backbone.")}
    assert any(n.startswith("decode_head.") for n in heads) and any(n.startswith("aux_head.") for n in heads)
    assert _all(heads.values(), 2 * 4e-3)


def test_layer_decay_and_head_lr_reach_the_backbone_inside_the_detector() -> None:
    kwargs = dict(backbone="test_patchconvnet", detector="retinanet", num_classes=3, scheduler="constant")
    task = ObjectDetector(layer_decay=0.5, **kwargs)
    lr = _per_param(task, _attach(task), "lr")
    body = "detector.backbone.body."
    assert lr[body + "patch_embed.proj.0.0.weight"] == pytest.approx(LR * 0.5**3)
    assert lr[body + "blocks.0.attn.qkv_pos.0.weight"] == pytest.approx(LR * 0.5**2)
    assert lr[body + "blocks.1.attn.qkv_pos.0.weight"] == pytest.approx(LR * 0.5)
    rest = [v for n, v in lr.items() if not n.startswith(body)]  # simple pyramid, FPN, RetinaNet head
    assert any(n.startswith("detector.backbone.pyramid.") for n in lr) and _all(rest, LR)

    task = ObjectDetector(head_lr=1e-2, **kwargs)
    optimizer = _attach(task)
    lr = _per_param(task, optimizer, "lr")
    assert _all([v for n, v in lr.items() if n.startswith(body)], LR)
    assert _all([v for n, v in lr.items() if not n.startswith(body)], 1e-2)
    assert len(optimizer.param_groups) == 4
    wd = _per_param(task, optimizer, "weight_decay")
    assert wd[body + "blocks.0.gamma_1"] == 0.0 and wd[body + "blocks.0.attn.qkv_pos.0.weight"] == WD


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"layer_decay": 1.5}, "layer_decay"),
        ({"layer_decay": 0.0}, "layer_decay"),
        ({"head_lr": 0.0}, "head_lr"),
        ({"freeze_backbone_epochs": -1}, "freeze_backbone_epochs"),
    ],
)
def test_bad_options_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"model.init_args.{key}"):
        ImageClassifier("test_patchconvnet", num_classes=3, **kwargs)


class RandomImages(L.LightningDataModule):
    """``n`` random 32x32 images with labels, in batches of ``batch_size``."""

    def __init__(self, batch_size: int = 2, n: int = 8) -> None:
        super().__init__()
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(0)
        images, labels = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)
        self.samples = [{"image": i, "label": y} for i, y in zip(images, labels)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.samples, batch_size=self.batch_size)


def _trainer(max_epochs: int, callbacks: list, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, limit_train_batches=2, limit_val_batches=0,
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **kwargs,
    )  # fmt: skip


class RecordLR(L.Callback):
    """The lr of every parameter before each optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, task: L.LightningModule, batch, batch_idx: int) -> None:
        self.steps.append(_per_param(task, trainer.optimizers[0], "lr"))


@pytest.mark.parametrize(
    "length", [{"max_epochs": 2}, {"max_epochs": -1, "max_steps": 8}, {"max_epochs": 4, "max_steps": 8}]
)
def test_epoch_options_count_the_loaders_epochs_when_max_steps_ends_the_run(length: dict) -> None:
    """warmup_epochs and milestones are epochs of the training loader (4 steps here), also when max_steps sets the
    run's length: they were 0 steps without max_epochs and max_steps / max_epochs steps with both."""
    task = ImageClassifier(
        "test_coat_lite", num_classes=3, optimizer=partial(torch.optim.SGD, lr=0.1), lr_batch_size=2,
        scheduler="step", milestones=[1], gamma=0.1, warmup_epochs=1, warmup_lr=0.0,
    )  # fmt: skip
    record = RecordLR()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=0, callbacks=[record], **length,
    )  # fmt: skip
    trainer.fit(task, datamodule=RandomImages(batch_size=2, n=8))
    lrs = [round(max(step.values()), 6) for step in record.steps]
    assert lrs == [0.0, 0.025, 0.05, 0.075, 0.01, 0.01, 0.01, 0.01]


class RecordFused(L.Callback):
    """Whether the optimizer is fused, and the gradient norm each step used (after clipping, which runs after
    ``on_before_optimizer_step``; the gradients stay until the next step zeroes them)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.max_abs: list[float] = []

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self.fused = {g["fused"] for g in trainer.optimizers[0].param_groups}

    def on_train_batch_end(self, trainer: L.Trainer, task: L.LightningModule, *args) -> None:
        grads = [p.grad for p in task.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        self.max_abs.append(max(g.abs().max().item() for g in grads))


@pytest.mark.parametrize("clip, algorithm", [(None, None), (1e-3, "norm"), (1e-5, "value")])
def test_default_optimizer_is_fused_and_clips_under_bf16(clip: float | None, algorithm: str | None) -> None:
    """The default AdamW takes the fused kernel on CPU, also with gradient clipping under bf16-mixed, which the
    task does itself where Lightning's plugin refuses fused optimizers; the model trains."""
    task = ImageClassifier("test_coat_lite", num_classes=3)
    record = RecordFused()
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    trainer = _trainer(
        1, [record], enable_checkpointing=False, precision="bf16-mixed", gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
    )  # fmt: skip
    trainer.fit(task, datamodule=RandomImages(batch_size=2))
    assert record.fused == {True} and len(record.norms) == 2
    if algorithm == "norm":  # at the threshold: random init gives far larger gradients
        assert record.norms == pytest.approx([clip] * 2, rel=1e-3)
    elif algorithm == "value":  # every entry within +-clip, and the largest at it
        assert record.max_abs == pytest.approx([clip] * 2, rel=1e-6)
    else:
        assert min(record.norms) > 1e-2 and min(record.max_abs) > 1e-4
    assert all(not torch.equal(before[n], p) for n, p in task.named_parameters() if n.endswith("weight"))


def test_default_optimizer_is_unfused_when_16_mixed_clips() -> None:
    """Under 16-mixed, clipping needs the unscaled gradients before the step: the default AdamW is not fused."""
    task = ImageClassifier("test_coat_lite", num_classes=3)
    scaler = torch.amp.GradScaler("cpu")
    task.trainer = SimpleNamespace(gradient_clip_val=1.0, precision_plugin=MixedPrecision("16-mixed", "cpu", scaler))
    assert task.default_optimizer(task.parameters()).param_groups[0]["fused"] is None
    task.trainer = SimpleNamespace(gradient_clip_val=None, precision_plugin=MixedPrecision("16-mixed", "cpu", scaler))
    assert task.default_optimizer(task.parameters()).param_groups[0]["fused"] is True


def test_configured_fused_optimizer_runs_unfused_when_16_mixed_clips() -> None:
    """The GPU recipes name AdamW(fused: true) and clip gradients; under 16-mixed (the README's advice for GPUs
    without bf16) Lightning refused the fused optimizer at the first step. It is rebuilt unfused, with a warning,
    and keeps the config's other options."""
    optimizer = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05, betas=(0.8, 0.9), fused=True)
    task = ImageClassifier("test_swin", num_classes=3, optimizer=optimizer)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer = _trainer(1, [], enable_checkpointing=False, gradient_clip_val=1.0, plugins=[plugin])
    with pytest.warns(UserWarning, match=r"AdamW\(fused=True\) from the config runs unfused"):
        trainer.fit(task, datamodule=RandomImages(batch_size=2))
    (used,) = trainer.optimizers
    assert not used.defaults["fused"] and used.defaults["betas"] == (0.8, 0.9)
    assert trainer.global_step == 2


def test_schedule_scales_with_each_layer() -> None:
    task = ImageClassifier(
        "test_patchconvnet", num_classes=3, layer_decay=0.5, lr_batch_size=1, scheduler="cosine", warmup_steps=2,
        warmup_lr=1e-5, min_lr=1e-4,
    )  # fmt: skip
    record = RecordLR()
    L.seed_everything(0)
    _trainer(2, [record], enable_checkpointing=False).fit(task, datamodule=RandomImages(batch_size=2))
    peak = 2 * LR  # LR for 1 image (lr_batch_size), batch 2

    def schedule(step: int) -> float:  # of the unscaled lr, over 4 steps with 2 of warmup
        if step < 2:
            return 1e-5 + (peak - 1e-5) * step / 2
        return 1e-4 + (peak - 1e-4) * 0.5 * (1 + math.cos(math.pi * (step - 2) / 2))

    assert len(record.steps) == 4
    for step, lr in enumerate(record.steps):
        assert lr["backbone.patch_embed.proj.0.0.weight"] == pytest.approx(0.5**3 * schedule(step), rel=1e-6)
        assert lr["backbone.blocks.1.attn.qkv_pos.0.weight"] == pytest.approx(0.5 * schedule(step), rel=1e-6)
        assert lr["backbone.head.weight"] == pytest.approx(schedule(step), rel=1e-6)


class RecordFreeze(L.Callback):
    """Per epoch: body and head weights at its end, the modules' modes and the body's AdamW state during it."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.modes: dict[int, dict[str, bool]] = {}
        self.body_state: dict[int, bool] = {}

    def on_train_batch_start(self, trainer: L.Trainer, task: L.LightningModule, batch, batch_idx: int) -> None:
        self.modes[trainer.current_epoch] = {n: m.training for n, m in task.backbone.named_modules()}

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        self.weights[epoch] = {n: v.detach().clone() for n, v in task.backbone.state_dict().items()}
        optimizer = trainer.optimizers[0]
        self.body_state[epoch] = any(optimizer.state.get(p) for p in task.backbone.blocks.parameters())


def _body(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: v for n, v in weights.items() if not n.startswith("head.")}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_frozen_backbone_resumes_across_the_boundary(tmp_path: Path) -> None:
    def fit(max_epochs: int, ckpt_path: Path | None = None) -> RecordFreeze:
        task = ImageClassifier(
            "test_patchconvnet", num_classes=3, freeze_backbone_epochs=2, scheduler="constant",
            backbone_kwargs={"drop_rate": 0.1, "drop_path_rate": 0.1},
        )  # fmt: skip
        record = RecordFreeze()
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
        _trainer(max_epochs, [record, checkpoint]).fit(task, datamodule=RandomImages(), ckpt_path=ckpt_path)
        return record

    L.seed_everything(0)
    initial = ImageClassifier("test_patchconvnet", num_classes=3).backbone.state_dict()  # what fit() builds next
    L.seed_everything(0)
    first = fit(max_epochs=1)  # epoch 0: frozen
    assert _same(_body(first.weights[0]), _body(initial))
    assert not torch.equal(first.weights[0]["head.weight"], initial["head.weight"])
    assert not first.body_state[0]
    modes = first.modes[0]
    assert modes["head"] and not any(v for n, v in modes.items() if n != "head")  # Dropout, DropPath included
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert len(ckpt["optimizer_states"][0]["state"]) == 2  # only the classifier's weight and bias have moments

    L.seed_everything(1)
    second = fit(max_epochs=3, ckpt_path=tmp_path / "last.ckpt")  # epoch 1: still frozen; epoch 2: trained
    assert _same(_body(second.weights[1]), _body(initial))
    assert not torch.equal(second.weights[1]["head.weight"], first.weights[0]["head.weight"])
    assert not second.body_state[1] and second.body_state[2]
    changed = [n for n, v in _body(second.weights[2]).items() if not torch.equal(v, initial[n])]
    assert len(changed) == len(_body(initial))  # every body tensor moved (blocks, stem, class token, norms)
    assert all(second.modes[2].values()) and not second.modes[1]["blocks.0"]

    third = fit(max_epochs=4, ckpt_path=tmp_path / "last.ckpt")  # resumed past the boundary: trained throughout
    assert all(third.modes[3].values())
    assert all(not torch.equal(v, second.weights[2][n]) for n, v in _body(third.weights[3]).items())


def test_cli_takes_the_options(capsys) -> None:
    args = ["--model.init_args.layer_decay=0.75", "--model.init_args.head_lr=1e-3"]
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONFIGS / "demo" / "coat_lite.yaml"), *args,
              "--model.init_args.freeze_backbone_epochs=2", "--print_config"])  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert (printed["layer_decay"], printed["head_lr"], printed["freeze_backbone_epochs"]) == (0.75, 1e-3, 2)
