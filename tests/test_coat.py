"""CoaT / CoaT-Lite: official golden tensors, timm equivalence, key manifests, parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from synth import load_json, load_tensor, synth_state_dict

from lightning_vit.backbones import create_backbone
from lightning_vit.backbones.coat import CoaT, checkpoint_filter_fn

REFERENCE = Path(__file__).parents[2] / "shared" / "reference" / "coat"
VARIANTS = {  # name: params of the timm column of ARCHITECTURES.md
    "coat_lite_tiny": 5_721_960,
    "coat_lite_mini": 11_011_560,
    "coat_lite_small": 19_838_504,
    "coat_lite_medium": 44_571_048,
    "coat_tiny": 5_498_540,
    "coat_mini": 10_337_004,
    "coat_small": 21_693_908,
}
TINY_CFGS = ["coat_tinycfg", "coat_lite_tinycfg"]


def _tinycfg(name: str, **kwargs) -> CoaT:
    cfg = load_json("coat/golden_info.json")[name]["constructor_kwargs"]
    return CoaT(**{**cfg, **kwargs}).eval()


def _synth(name: str, dense: bool = False) -> dict[str, torch.Tensor]:
    manifest = load_json(f"coat/{name}.official{'_dense' if dense else ''}.keys.json")
    return synth_state_dict(manifest, load_json(f"coat/{name}.official.aliases.json"))


def _map_tolerance(name: str, index: int, ref: torch.Tensor) -> dict[str, float]:
    """The golden README's tolerances: 1e-4, scaled to the map for CoaT's fused scales 2-4."""
    if name == "coat_tinycfg" and index > 0:
        return dict(atol=1e-5 * ref.abs().max().item(), rtol=1e-4)
    return dict(atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", TINY_CFGS)
def test_golden_logits(name: str) -> None:
    model = _tinycfg(name)
    model.load_state_dict(checkpoint_filter_fn(_synth(name), model), strict=True)
    with torch.no_grad():
        out = model(load_tensor("coat/input_seed1_2x3x224x224.pt"))
    torch.testing.assert_close(out, load_tensor(f"coat/{name}.synth.logits.pt"), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", TINY_CFGS)
@pytest.mark.parametrize("size", ["250x330", "193x517"])
def test_golden_dense_maps(name: str, size: str) -> None:
    """The dense form, loaded from the official dense checkpoint layout, reproduces the official maps."""
    model = _tinycfg(name, features_only=True)
    model.load_state_dict(checkpoint_filter_fn(_synth(name, dense=True), model), strict=True)
    seed = {"250x330": 2, "193x517": 3}[size]
    x = load_tensor(f"coat/input_seed{seed}_1x3x{size}.pt")
    refs = list(load_tensor(f"coat/{name}.synth.dense_feats_{size}.pt").values())
    with torch.no_grad():
        maps = model(x)
    assert len(maps) == 4
    for i, (out, ref) in enumerate(zip(maps, refs)):
        torch.testing.assert_close(out, ref, **_map_tolerance(name, i, ref))


@pytest.mark.parametrize("name", TINY_CFGS)
def test_classification_model_intermediates_equal_dense_form(name: str) -> None:
    """Loading the official classification checkpoint, forward_intermediates gives the dense maps."""
    model = _tinycfg(name)
    model.load_state_dict(checkpoint_filter_fn(_synth(name), model), strict=True)
    refs = list(load_tensor(f"coat/{name}.synth.dense_feats_250x330.pt").values())
    with torch.no_grad():
        maps = model.forward_intermediates(load_tensor("coat/input_seed2_1x3x250x330.pt"), intermediates_only=True)
    for i, (out, ref) in enumerate(zip(maps, refs)):
        torch.testing.assert_close(out, ref, **_map_tolerance(name, i, ref))


@pytest.mark.parametrize("name", TINY_CFGS)
def test_equals_timm(name: str) -> None:
    """Same weights, same input: our logits and intermediates equal timm's CoaT at 224."""
    cfg = load_json("coat/golden_info.json")[name]["constructor_kwargs"]
    ref = timm.models.coat.CoaT(img_size=224, **cfg).eval()
    ours = _tinycfg(name)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = load_tensor("coat/input_seed1_2x3x224x224.pt")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
        for a, b in zip(ours.forward_intermediates(x)[1], ref.forward_intermediates(x)[1]):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", TINY_CFGS)
def test_training_gradients_equal_timm(name: str) -> None:
    """With gradients the attention takes its training route (softmax normalised after the product, the position
    encoding added in place): every parameter's gradient equals timm's."""
    cfg = load_json("coat/golden_info.json")[name]["constructor_kwargs"]
    ref = timm.models.coat.CoaT(img_size=224, **cfg).train()
    ours = _tinycfg(name).train()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = load_tensor("coat/input_seed1_2x3x224x224.pt")
    for model in (ours, ref):
        model(x).logsumexp(-1).sum().backward()
    ref_grads = dict(ref.named_parameters())
    for n, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n].grad, atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_keys_and_parameter_count(name: str) -> None:
    with torch.device("meta"):
        model = create_backbone(name)
    manifest = json.loads((REFERENCE / f"{name}.timm.keys.json").read_text())
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(k, s) for k, s in manifest]
    assert sum(p.numel() for p in model.parameters()) == VARIANTS[name]


@pytest.mark.parametrize("name", ["coat_lite_tiny", "coat_tiny"])
def test_official_checkpoint_layouts_load_strict(name: str) -> None:
    """Official classification and dense manifests (aliases and unused norms included) load with strict=True."""
    for suffix, features_only in (("official", False), ("official_dense", True)):
        manifest = json.loads((REFERENCE / f"{name}.{suffix}.keys.json").read_text())
        with torch.device("meta"):
            model = create_backbone(name, features_only=features_only)
        state = {k: torch.empty(s, device="meta") for k, s in manifest}
        filtered = checkpoint_filter_fn({"model": state}, model)
        result = model.load_state_dict(filtered, strict=True, assign=True)
        assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("name", ["test_coat", "test_coat_lite"])
@pytest.mark.parametrize("size", [(250, 330), (193, 517), (32, 45)])
def test_any_size(name: str, size: tuple[int, int]) -> None:
    """Odd sizes work for Lite and full CoaT (timm's parallel blocks fail there); maps floor like the convs."""
    model = create_backbone(name, num_classes=5).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        logits = model(x)
    h, w = size
    expected = []
    for stride in (4, 2, 2, 2):
        h, w = h // stride, w // stride
        expected.append((h, w))
    assert [tuple(m.shape[-2:]) for m in maps] == expected
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()


def test_features_only_form_has_no_classifier_keys() -> None:
    model = create_backbone("test_coat", features_only=True)
    assert not any(k.startswith(("norm", "head", "aggregate")) for k in model.state_dict())
    maps = model(torch.randn(2, 3, 64, 96))
    assert [m.shape[1] for m in maps] == [info["num_chs"] for info in model.feature_info]


def test_shared_modules_are_shared() -> None:
    """cpe/crpe are one module per scale, shared by every block: one gradient, one tensor, several keys."""
    model = create_backbone("test_coat")
    assert model.serial_blocks2[0].cpe is model.cpe2
    assert model.parallel_blocks[0].factoratt_crpe3.crpe is model.crpe3
    assert model.parallel_blocks[0].mlp2 is model.parallel_blocks[0].mlp4


@pytest.mark.parametrize(
    "name", [n if n in ("coat_lite_tiny", "coat_tiny") else pytest.param(n, marks=pytest.mark.slow) for n in VARIANTS]
)
def test_full_variant_equals_timm(name: str) -> None:
    """Every registered variant, with timm's randomly initialised weights, gives timm's logits at 224."""
    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    ours = create_backbone(name).eval()
    ours.load_state_dict(checkpoint_filter_fn(ref.state_dict(), ours), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
