"""PatchConvNet: official golden tensors, key manifests, parameter counts, any input size, attention maps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
from synth import load_json, load_tensor, synth_state_dict

from lightning_vit.backbones import create_backbone
from lightning_vit.backbones.patchconvnet import PatchConvNet, checkpoint_filter_fn

REFERENCE = Path(__file__).parents[2] / "shared" / "reference" / "patchconvnet"
VARIANTS = {  # name: params of ARCHITECTURES.md
    "patchconvnet_s60": 25_231_096,
    "patchconvnet_s120": 47_723_896,
    "patchconvnet_b60": 99_388_936,
    "patchconvnet_b120": 188_611_336,
    "patchconvnet_l60": 176_009_576,
    "patchconvnet_l120": 334_294_376,
    "patchconvnet_s60_multi": 25_614_712,
}
# Constructor arguments of the golden README's tiny official configurations.
TINY_CFGS = {
    "patchconvnet_tinycfg": dict(embed_dim=96, depth=4, num_classes=10),
    "patchconvnet_tinycfg_multi": dict(embed_dim=96, depth=4, num_classes=1000, multi_token=True),
}
TOL = dict(atol=1e-4, rtol=1e-4)


def _input() -> torch.Tensor:
    return load_tensor("coat/input_seed1_2x3x224x224.pt")


def _synth_model(name: str, **kwargs) -> PatchConvNet:
    model = PatchConvNet(**{**TINY_CFGS[name], **kwargs}).eval()
    state_dict = synth_state_dict(load_json(f"patchconvnet/{name}.keys.json"))
    model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=True)
    return model


def _official_trunk(model: PatchConvNet, x: torch.Tensor) -> torch.Tensor:
    """The trunk written as the official code runs it, on (B, N, C) tokens, but with the true (h, w) grid."""
    x = model.patch_embed.proj(x)
    b, c, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)  # (B, N, C)
    for blk in model.blocks:
        y = blk.norm1(x).transpose(1, 2).reshape(b, c, h, w)
        y = blk.attn.qkv_pos(y).reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)
        x = x + blk.gamma_1 * y
    return x


@pytest.mark.parametrize("name", list(TINY_CFGS))
def test_golden(name: str) -> None:
    """Logits and every intermediate of the official model, from the same synth weights."""
    model = _synth_model(name)
    ref = load_tensor(f"patchconvnet/{name}.synth.feats_224x224.pt")
    x = _input()
    with torch.no_grad():
        stem = model.patch_embed(x).flatten(1, 2)
        feats = model.forward_features(x)
        trunk = feats.permute(0, 2, 3, 1).flatten(1, 2)
        cls = model.blocks_token_only[0](trunk, model.cls_token.expand(2, -1, -1))
        pre_logits = model.forward_head(feats, pre_logits=True)
        logits = model(x)
    # The synth layer scales are small: make sure the trunk test is not just the stem test again.
    assert (ref["trunk_tokens"] - ref["stem_tokens"]).abs().max() > 100 * TOL["atol"]
    torch.testing.assert_close(stem, ref["stem_tokens"], **TOL)
    torch.testing.assert_close(trunk, ref["trunk_tokens"], **TOL)
    torch.testing.assert_close(cls, ref["cls_tokens_after_agg"], **TOL)
    torch.testing.assert_close(pre_logits, ref["pre_logits"], **TOL)
    torch.testing.assert_close(logits, ref["logits"], **TOL)
    torch.testing.assert_close(logits, load_tensor(f"patchconvnet/{name}.synth.logits.pt"), **TOL)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_official_keys_and_param_count(variant: str) -> None:
    with torch.device("meta"):
        model = create_backbone(variant)
    manifest = json.loads((REFERENCE / f"{variant}.official.keys.json").read_text())
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == manifest
    assert sum(p.numel() for p in model.parameters()) == VARIANTS[variant]


@pytest.mark.parametrize("name", list(TINY_CFGS))
def test_tiny_manifest(name: str) -> None:
    with torch.device("meta"):
        model = PatchConvNet(**TINY_CFGS[name])
    manifest = load_json(f"patchconvnet/{name}.keys.json")
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == manifest


def test_layer_scale_init() -> None:
    """Layer scales start at 1e-4 for S60 (and S60 multi) and at 1e-6 for the others (the official ``init_scale``)."""
    for variant in VARIANTS:
        model = create_backbone(variant, depth=1, num_classes=1)
        value = 1e-4 if variant.startswith("patchconvnet_s60") else 1e-6
        for gamma in (model.blocks[0].gamma_1, model.blocks_token_only[0].gamma_1, model.blocks_token_only[0].gamma_2):
            assert torch.all(gamma == value), variant


@pytest.mark.parametrize("size", [(250, 330), (224, 448), (193, 517)])
@pytest.mark.parametrize("name", list(TINY_CFGS))
def test_any_size_matches_official_layout(name: str, size: tuple[int, int]) -> None:
    """Non-square, non-multiple-of-16 inputs: the trunk equals the official token maths on the real (h, w) grid."""
    model = _synth_model(name)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.forward_features(x)
        ref = _official_trunk(model, x)
        logits = model(x)
    h, w = math.ceil(size[0] / 16), math.ceil(size[1] / 16)
    assert feats.shape == (1, 96, h, w)
    torch.testing.assert_close(feats.permute(0, 2, 3, 1).flatten(1, 2), ref, **TOL)
    assert logits.shape == (1, TINY_CFGS[name]["num_classes"]) and torch.isfinite(logits).all()


def _pooling_inputs_and_output(model: PatchConvNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normed tokens the pooling attention received and what it returned, captured with a hook."""
    seen = {}
    handle = model.blocks_token_only[0].attn.register_forward_hook(lambda m, args, out: seen.update(u=args[0], out=out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["u"], seen["out"]


def test_attention_map_single_token() -> None:
    """Non-negative, sums to 1 with the class token's own weight, and is the weighting the pooling used."""
    model = _synth_model("patchconvnet_tinycfg")
    x = torch.randn(2, 3, 250, 330, generator=torch.Generator().manual_seed(0))
    maps, cls_weight = model.forward_attention(x, return_cls_weight=True)
    assert maps.shape == (2, 16, 21) and cls_weight.shape == (2,)
    assert (maps >= 0).all() and (cls_weight > 0).all()
    assert maps.amax() > 10 * maps.amin()  # far from uniform, so a misordered map cannot pass the check below
    torch.testing.assert_close(maps.sum((-2, -1)) + cls_weight, torch.ones(2))
    torch.testing.assert_close(model.forward_attention(x), maps)

    u, out = _pooling_inputs_and_output(model, x)  # u: (B, 1 + N, C), class token first
    attn = model.blocks_token_only[0].attn
    weights = torch.cat((cls_weight[:, None], maps.flatten(1)), dim=1)  # (B, 1 + N), row-major patches
    with torch.no_grad():
        pooled = attn.proj(torch.einsum("bn,bnc->bc", weights, attn.v(u)))
    torch.testing.assert_close(pooled, out[:, 0], **TOL)


def test_attention_map_multi_token() -> None:
    """One map per class over the patches only: each sums to 1 and is the weighting the pooling used."""
    model = _synth_model("patchconvnet_tinycfg_multi")
    x = torch.randn(1, 3, 200, 120, generator=torch.Generator().manual_seed(0))
    maps, cls_weight = model.forward_attention(x, return_cls_weight=True)
    assert maps.shape == (1, 1000, 13, 8) and (maps >= 0).all()
    assert torch.equal(cls_weight, torch.zeros(1, 1000))
    torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(1, 1000))
    assert not torch.allclose(maps[:, 0], maps[:, 1]) and maps.amax() > 10 * maps.amin()

    u, out = _pooling_inputs_and_output(model, x)  # u: (B, K + N, C)
    attn = model.blocks_token_only[0].attn
    with torch.no_grad():
        pooled = attn.proj(torch.einsum("bkn,bnc->bkc", maps.flatten(2), attn.v(u[:, 1000:])))
    torch.testing.assert_close(pooled, out, **TOL)


def test_multi_token_any_num_classes() -> None:
    """Official multi-token logits are ``head[i](token i)``; the model takes any number of classes and resets."""
    model = create_backbone("test_patchconvnet", multi_token=True, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 96)
    assert model.cls_token.shape == (1, 7, 64) and len(model.head) == 7
    with torch.no_grad():
        tokens = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    assert tokens.shape == (2, 7, 64)
    torch.testing.assert_close(logits, torch.cat([model.head[i](tokens[:, i]) for i in range(7)], dim=1), **TOL)
    assert model.forward_attention(x).shape == (2, 7, 4, 6)

    model.reset_classifier(3)
    assert model.num_classes == 3 and model.cls_token.shape == (1, 3, 64) and len(model.head) == 3
    assert model(x).shape == (2, 3)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        model.reset_classifier(0)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        PatchConvNet(embed_dim=64, depth=1, num_classes=0, multi_token=True)


def test_features_only_dense_form() -> None:
    """Stem + trunk only, loadable from a classification checkpoint; one stride-16 map equal to the trunk's."""
    classifier = _synth_model("patchconvnet_tinycfg")
    dense = PatchConvNet(embed_dim=96, depth=4, features_only=True).eval()
    assert dense.num_classes == 0 and dense.feature_info == [dict(num_chs=96, reduction=16, module="blocks")]
    assert not any(k.startswith(("cls_token", "blocks_token_only", "norm", "head")) for k in dense.state_dict())
    state_dict = synth_state_dict(load_json("patchconvnet/patchconvnet_tinycfg.keys.json"))
    dense.load_state_dict(checkpoint_filter_fn(state_dict, dense), strict=True)
    x = torch.randn(1, 3, 250, 330)
    with torch.no_grad():
        maps = dense(x)
        final, intermediates = classifier.forward_intermediates(x)
    assert isinstance(maps, list) and len(maps) == 1 and maps[0].shape == (1, 96, 16, 21)
    torch.testing.assert_close(maps[0], intermediates[0], **TOL)
    torch.testing.assert_close(final, intermediates[0], **TOL)
    with pytest.raises(ValueError, match="no pooling block"):
        dense.forward_attention(x)


def test_forward_intermediates_norm() -> None:
    """``norm=True`` applies the final LayerNorm to each token of the map, as the official ``norm`` over all tokens."""
    model = _synth_model("patchconvnet_tinycfg")
    x = _input()
    with torch.no_grad():
        (normed,) = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        (raw,) = model.forward_intermediates(x, indices=[-1], intermediates_only=True)
    ref = model.norm(raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(normed, ref)
    assert not torch.allclose(normed, raw)
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NLC")


def test_checkpoint_filter_fn() -> None:
    """Unwraps training checkpoints and drops class-dependent entries that do not fit the model's classes."""
    state_dict = synth_state_dict(load_json("patchconvnet/patchconvnet_tinycfg_multi.keys.json"))
    wrapped = {"model": {f"module.{k}": v for k, v in state_dict.items()}}
    same = PatchConvNet(**TINY_CFGS["patchconvnet_tinycfg_multi"])
    assert checkpoint_filter_fn(wrapped, same).keys() == state_dict.keys()

    other = PatchConvNet(embed_dim=96, depth=4, num_classes=5, multi_token=True)
    filtered = checkpoint_filter_fn(state_dict, other)
    missing, unexpected = other.load_state_dict(filtered, strict=False)
    assert unexpected == [] and set(missing) == {"cls_token"} | {
        f"head.{i}.{p}" for i in range(5) for p in "weight bias".split()
    }

    single = PatchConvNet(embed_dim=96, depth=4, num_classes=3)
    single_sd = synth_state_dict(load_json("patchconvnet/patchconvnet_tinycfg.keys.json"))
    missing, unexpected = single.load_state_dict(checkpoint_filter_fn(single_sd, single), strict=False)
    assert unexpected == [] and missing == ["head.weight", "head.bias"]


def test_no_weight_decay() -> None:
    model = create_backbone("test_patchconvnet")
    names = model.no_weight_decay()
    expected = {"cls_token", "blocks.0.gamma_1", "blocks.1.gamma_1"}
    assert names == expected | {"blocks_token_only.0.gamma_1", "blocks_token_only.0.gamma_2"}
    assert names <= dict(model.named_parameters()).keys()


def test_grad_checkpointing_same_outputs_and_grads() -> None:
    torch.manual_seed(0)
    model = create_backbone("test_patchconvnet", num_classes=4)
    x = torch.randn(2, 3, 64, 80)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_timm_registry_and_no_hub_weights() -> None:
    model = timm.create_model("test_patchconvnet", num_classes=3)
    assert isinstance(model, PatchConvNet) and model(torch.randn(1, 3, 32, 48)).shape == (1, 3)
    dense = timm.create_model("test_patchconvnet", features_only=True)
    assert [m.shape[1:] for m in dense(torch.randn(1, 3, 32, 48))] == [(64, 2, 3)]
    with pytest.raises(ValueError, match="pretrained='path/to/checkpoint.pth'"):
        timm.create_model("patchconvnet_s60", pretrained=True)


@pytest.mark.slow
def test_s60_full_size_forward() -> None:
    model = create_backbone("patchconvnet_s60").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        maps = model.forward_attention(x)
        logits = model(x)
    assert maps.shape == (1, 14, 14) and logits.shape == (1, 1000) and torch.isfinite(logits).all()
