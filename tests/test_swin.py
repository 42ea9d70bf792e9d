"""Swin Transformer: timm equivalence, official golden tensors, checkpoint layouts, parameter counts, any size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm.models.swin_transformer as timm_swin
import torch
import torch.nn.functional as F
from synth import load_json, load_tensor, synth_state_dict

from lightning_vit.backbones import create_backbone, swin
from lightning_vit.backbones.swin import (
    SwinTransformer,
    checkpoint_filter_fn,
    relative_position_index,
    shift_window_mask,
)

REFERENCE = Path(__file__).parents[2] / "shared" / "reference" / "swin"
VARIANTS = {  # name: params in ARCHITECTURES.md
    "swin_tiny_patch4_window7_224": 28_288_354,
    "swin_small_patch4_window7_224": 49_606_258,
    "swin_base_patch4_window7_224": 87_768_224,
    "swin_large_patch4_window7_224": 196_532_476,
    "swin_base_patch4_window12_384": 87_903_584,
    "swin_large_patch4_window12_384": 196_735_516,
}
TINY = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)  # swin_tinycfg
DENSE_INPUTS = {  # golden size: input file (the 224 golden is the first image of the batch)
    "250x330": "coat/input_seed2_1x3x250x330.pt",
    "193x517": "coat/input_seed3_1x3x193x517.pt",
    "224": "coat/input_seed1_2x3x224x224.pt",
}


def _manifest(name: str) -> list:
    return json.loads((REFERENCE / f"{name}.keys.json").read_text())


def _tiny(**kwargs) -> SwinTransformer:
    return SwinTransformer(**{"img_size": 224, "num_classes": 10, **TINY, **kwargs}).eval()


def _official_with_buffers(manifest: list) -> dict[str, torch.Tensor]:
    """Synth weights in the official layout, plus the saved buffers a real official checkpoint carries."""
    state = synth_state_dict(manifest)
    for key, shape in manifest:
        if key not in state:  # relative_position_index / attn_mask, which the filter must drop
            state[key] = torch.zeros(shape, dtype=torch.long if key.endswith("index") else torch.float32)
    return state


def _map_sizes(h: int, w: int) -> list[tuple[int, int]]:
    sizes = [(-(-h // 4), -(-w // 4))]
    for _ in range(3):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    return sizes


@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_matches_timm_layout_and_param_count(name: str) -> None:
    with torch.device("meta"):
        model = create_backbone(name)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == _manifest(f"{name}.timm")
    assert sum(p.numel() for p in model.parameters()) == VARIANTS[name]


def test_dense_form_keys_are_timm_layout_plus_the_mmdet_output_norms() -> None:
    with torch.device("meta"):
        model = create_backbone("swin_tiny_patch4_window7_224", features_only=True)
    trunk = [k for k, _ in _manifest("swin_tiny_patch4_window7_224.timm") if not k.startswith(("norm.", "head."))]
    norms = [k for k, _ in _manifest("swin_tiny_patch4_window7_224.official_dense_mmdet") if k.startswith("norm")]
    assert list(model.state_dict()) == trunk + norms
    assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)


def test_equals_timm_at_224() -> None:
    """Same weights as timm's SwinTransformer: logits, features and intermediates equal."""
    torch.manual_seed(0)
    ref = timm_swin.SwinTransformer(img_size=224, num_classes=10, **TINY).eval()
    model = _tiny()
    assert list(model.state_dict()) == list(ref.state_dict())
    model.load_state_dict(ref.state_dict(), strict=True)
    x = load_tensor("coat/input_seed1_2x3x224x224.pt")
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.forward_features(x), ref.forward_features(x), atol=1e-4, rtol=1e-4)
        for kwargs in ({}, {"norm": True}, {"indices": 2}, {"indices": [0, 2], "stop_early": True}):
            final, maps = model.forward_intermediates(x, **kwargs)
            ref_final, ref_maps = ref.forward_intermediates(x, **kwargs)
            torch.testing.assert_close(final, ref_final, atol=1e-4, rtol=1e-4)
            assert len(maps) == len(ref_maps)
            for out, expected in zip(maps, ref_maps):
                torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_golden_logits() -> None:
    model = _tiny()
    model.load_state_dict(
        checkpoint_filter_fn(synth_state_dict(load_json("swin/swin_tinycfg.official.keys.json")), model), strict=True
    )
    with torch.no_grad():
        out = model(load_tensor("coat/input_seed1_2x3x224x224.pt"))
    torch.testing.assert_close(out, load_tensor("swin/swin_tinycfg.synth.logits.pt"), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", list(DENSE_INPUTS))
@pytest.mark.parametrize("prefix", ["", "backbone."])
def test_golden_dense_maps(size: str, prefix: str) -> None:
    """The dense form loaded from the mmdet backbone layout (bare, or a detector's ``backbone.``) reproduces it."""
    state = synth_state_dict(load_json("swin/swin_tinycfg.official_dense_mmdet.keys.json"))
    if prefix:
        state = {"state_dict": {**{prefix + k: v for k, v in state.items()}, "neck.fpn.weight": torch.ones(3)}}
    model = _tiny(features_only=True)
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    refs = load_tensor(f"swin/swin_tinycfg.synth.dense_feats_{size}.pt")
    x = load_tensor(DENSE_INPUTS[size])[:1]
    with torch.no_grad():
        maps = model(torch.cat([x, x.flip(-1)]))  # a batch of 2: the shift masks are shared across the batch
    assert len(maps) == 4
    for i, out in enumerate(maps):
        torch.testing.assert_close(out[:1], refs[f"stage{i}"], atol=1e-4, rtol=1e-4)


def test_classification_form_at_other_sizes_pads_like_the_dense_backbone() -> None:
    """Off img_size the classifier pads before shifting too: stages 0-2 (shifting ones) equal the dense maps."""
    state = synth_state_dict(load_json("swin/swin_tinycfg.official.keys.json"))
    cls, dense = _tiny(), _tiny(features_only=True)
    cls.load_state_dict(checkpoint_filter_fn(state, cls), strict=True)
    dense.load_state_dict(checkpoint_filter_fn(state, dense), strict=True)
    x = load_tensor("coat/input_seed2_1x3x250x330.pt")
    with torch.no_grad():
        cls_maps = cls.forward_intermediates(x, intermediates_only=True)
        dense_maps = dense.forward_intermediates(x, intermediates_only=True)
    for i in range(3):
        torch.testing.assert_close(cls_maps[i], dense_maps[i], atol=1e-5, rtol=1e-5)
    assert (cls_maps[3] - dense_maps[3]).abs().max() > 1e-2  # stage 3: the classifier's 7x7 window, no shift


@pytest.mark.parametrize("features_only", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (33, 47), (97, 129), (250, 330), (224, 448)])
def test_any_input_size(size: tuple[int, int], features_only: bool) -> None:
    model = create_backbone("test_swin", num_classes=5, features_only=features_only).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        out = model(x)
    assert [tuple(m.shape[-2:]) for m in maps] == _map_sizes(*size)
    assert [m.shape[1] for m in maps] == [info["num_chs"] for info in model.feature_info]
    if features_only:
        assert [tuple(m.shape) for m in out] == [tuple(m.shape) for m in maps]
    else:
        assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_official_checkpoint_converts_like_timm() -> None:
    """A full-size official checkpoint (with its buffers, wrapped under ``model``) converts as timm converts it."""
    state = _official_with_buffers(_manifest("swin_tiny_patch4_window7_224.official"))
    model = create_backbone("swin_tiny_patch4_window7_224")
    with torch.device("meta"):
        ref_model = timm_swin.SwinTransformer()
    ours = checkpoint_filter_fn({"model": state}, model)
    expected = timm_swin.checkpoint_filter_fn(state, ref_model)
    assert list(ours) == list(expected) and set(ours) == set(model.state_dict())
    for key, value in expected.items():
        assert torch.equal(ours[key], value), key
    model.load_state_dict(ours, strict=True)
    assert torch.equal(model.layers[1].downsample.reduction.weight, state["layers.0.downsample.reduction.weight"])
    assert torch.equal(model.head.fc.weight, state["head.weight"])


def test_official_checkpoint_into_model_with_other_classes_keeps_fresh_head() -> None:
    state = _official_with_buffers(_manifest("swin_tiny_patch4_window7_224.official"))
    model = create_backbone("swin_tiny_patch4_window7_224", num_classes=7)
    head = model.head.fc.weight.clone()
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    assert torch.equal(model.head.fc.weight, head)
    assert torch.equal(model.norm.weight, state["norm.weight"])


@pytest.mark.parametrize("prefix", ["", "backbone."])
def test_mmdet_dense_checkpoint_full_size(prefix: str) -> None:
    state = _official_with_buffers(_manifest("swin_tiny_patch4_window7_224.official_dense_mmdet"))
    checkpoint = {"meta": {}, "state_dict": {prefix + k: v for k, v in state.items()}}
    if prefix:
        checkpoint["state_dict"]["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(81, 1024)
    model = create_backbone("swin_tiny_patch4_window7_224", features_only=True)
    model.load_state_dict(checkpoint_filter_fn(checkpoint, model), strict=True)
    assert torch.equal(model.norm3.weight, state["norm3.weight"])
    assert torch.equal(model.layers[3].downsample.norm.bias, state["layers.2.downsample.norm.bias"])


def test_cross_form_loading_keeps_the_missing_norms_at_init() -> None:
    """Classification checkpoint -> dense backbone (mmdet's ImageNet init) and dense checkpoint -> classifier."""
    cls_state = synth_state_dict(load_json("swin/swin_tinycfg.official.keys.json"))
    dense = _tiny(features_only=True)
    dense.load_state_dict(checkpoint_filter_fn(cls_state, dense), strict=True)
    assert torch.equal(dense.norm2.weight, torch.ones(128)) and torch.equal(dense.norm2.bias, torch.zeros(128))
    assert torch.equal(dense.patch_embed.proj.weight, cls_state["patch_embed.proj.weight"])

    dense_state = synth_state_dict(load_json("swin/swin_tinycfg.official_dense_mmdet.keys.json"))
    cls = _tiny()
    head = cls.head.fc.weight.clone()
    cls.load_state_dict(checkpoint_filter_fn(dense_state, cls), strict=True)
    assert torch.equal(cls.head.fc.weight, head) and torch.equal(cls.norm.weight, torch.ones(256))
    assert torch.equal(cls.layers[3].blocks[1].mlp.fc2.bias, dense_state["layers.3.blocks.1.mlp.fc2.bias"])


def test_checkpoint_round_trip_window7_224_to_window12_384(tmp_path: Path) -> None:
    """A window-7 / 224 checkpoint loads into a window-12 / 384 model with bicubic-resized bias tables."""
    torch.manual_seed(0)
    small = create_backbone("test_swin", num_classes=4).eval()
    path = tmp_path / "w7.pth"
    torch.save({"model": small.state_dict()}, path)

    big = create_backbone("test_swin", pretrained=str(path), num_classes=4, img_size=384, window_size=12).eval()
    old, new = small.state_dict(), big.state_dict()
    assert list(old) == list(new)
    tables = [k for k in old if k.endswith("relative_position_bias_table")]
    assert len(tables) == 8
    for key in old:
        if key in tables:
            heads = old[key].shape[1]
            grid = old[key].t().reshape(1, heads, 13, 13)
            expected = F.interpolate(grid, size=(23, 23), mode="bicubic", align_corners=False)
            assert new[key].shape == (529, heads)
            torch.testing.assert_close(new[key], expected.reshape(heads, 529).t())
        else:
            assert torch.equal(new[key], old[key]), key
    assert [stage.window_size for stage in big.layers] == [12, 12, 12, 12]
    assert [stage.shift_size for stage in big.layers] == [6, 6, 6, 0]  # stage 3 is 12x12 at 384: one window
    with torch.no_grad():
        assert torch.isfinite(big(torch.randn(1, 3, 384, 384))).all()

    torch.save(big.state_dict(), tmp_path / "w12.pth")
    back = create_backbone("test_swin", pretrained=str(tmp_path / "w12.pth"), num_classes=4)
    assert all(back.state_dict()[k].shape == (169, old[k].shape[1]) for k in tables)


def test_bias_tables_train_and_shift_masks_are_cached() -> None:
    """Masks come from the cache after the first forward (even one in inference mode); the tables get gradients."""
    model = create_backbone("test_swin", num_classes=3)
    x = torch.randn(2, 3, 97, 129)
    with torch.inference_mode():
        model.eval()(x)
    hits = shift_window_mask.cache_info().hits
    model.train()(x).sum().backward()
    assert shift_window_mask.cache_info().hits >= hits + 3  # stages 0-2 shift; stage 3 (7x7 window) does not
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name

    mask = shift_window_mask(14, 21, 7, 3, torch.device("cpu"), torch.float32)
    assert mask.shape == (6, 49, 49) and set(mask.unique().tolist()) == {-100.0, 0.0}
    assert mask[:2].eq(0).all() and mask[-1].ne(0).any()  # only the last window row/column mixes regions


def test_meta_device_build_then_load_equals_eager_build() -> None:
    """No state hides in buffers: a meta-device model materialised with ``to_empty`` and loaded is the same model."""
    torch.manual_seed(0)
    eager = create_backbone("test_swin", num_classes=3).eval()
    with torch.device("meta"):
        lazy = create_backbone("test_swin", num_classes=3)
    lazy = lazy.to_empty(device="cpu").eval()
    lazy.load_state_dict(eager.state_dict(), strict=True)
    x = torch.randn(1, 3, 75, 101)
    with torch.no_grad():
        torch.testing.assert_close(lazy(x), eager(x), atol=0, rtol=0)
    for ws in (7, 12):
        assert torch.equal(
            relative_position_index(ws, torch.device("cpu")), timm_swin.get_relative_position_index(ws, ws)
        )


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = create_backbone("test_swin", num_classes=3, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 80)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], atol=1e-6, rtol=1e-5)


def test_bf16_autocast_is_close_to_fp32() -> None:
    model = create_backbone("test_swin", num_classes=3).eval()
    x = torch.randn(1, 3, 96, 112)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)


def test_model_api() -> None:
    model = create_backbone("test_swin", num_classes=3)
    tables = {f"layers.{i}.blocks.{j}.attn.relative_position_bias_table" for i in range(4) for j in range(2)}
    assert model.no_weight_decay() == tables
    model.reset_classifier(6)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 6)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 128)
    with pytest.raises(ValueError, match="pretrained="):
        swin.test_swin(pretrained=True)
    # timm's create_model passes these keys; the builder drops them
    assert swin.test_swin(pretrained_cfg={}, pretrained_cfg_overlay=None, cache_dir=None).num_classes == 1000
