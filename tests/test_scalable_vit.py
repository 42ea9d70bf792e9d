"""ScalableViT: official golden tensors, key manifests, parameter counts, padded windows at any size."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from synth import load_json, load_tensor, synth_state_dict
from torch.utils.checkpoint import checkpoint

from lightning_vit.backbones import scalable_vit
from lightning_vit.backbones.scalable_vit import IWSA, SSA, ScalableViT, checkpoint_filter_fn

VARIANTS = {  # name: parameters of the official model (ARCHITECTURES.md; small_0: its official manifest)
    "scalable_vit_small": 32_000_472,
    "scalable_vit_small_0": 26_307_032,
    "scalable_vit_base": 81_881_624,
    "scalable_vit_large": 109_288_840,
}
# The golden README's tiny configuration of the official model.
TINYCFG = dict(
    num_classes=10,
    embed_dims=(32, 64, 128, 256),
    num_heads=(1, 2, 4, 8),
    depths=(2, 2, 4, 2),
    c_ratios=(2, 0.5, 1.25, 1),
)
INPUTS = {"224x224": "coat/input_seed1_2x3x224x224.pt", "224x448": "scalablevit/input_seed2_2x3x224x448.pt"}
TOL = dict(atol=1e-4, rtol=1e-4)


def _manifest(name: str) -> list:
    return load_json(
        f"scalablevit/{name}.keys.json" if name == "scalablevit_tinycfg" else f"scalablevit/{name}.official.keys.json"
    )


def _tinycfg(**kwargs) -> ScalableViT:
    model = ScalableViT(**{**TINYCFG, **kwargs}).eval()
    state = checkpoint_filter_fn({"model": synth_state_dict(_manifest("scalablevit_tinycfg"))}, model)
    model.load_state_dict(state, strict=True)
    return model


def test_golden_logits() -> None:
    with torch.no_grad():
        out = _tinycfg()(load_tensor(INPUTS["224x224"]))
    torch.testing.assert_close(out, load_tensor("scalablevit/scalablevit_tinycfg.synth.logits.pt"), **TOL)


@pytest.mark.parametrize("size", list(INPUTS))
def test_golden_stages_pooled_and_logits(size: str) -> None:
    """The four stage maps (PEG included, stage 4 before ``norm``), the pooled features and logits."""
    model = _tinycfg()
    ref = load_tensor(f"scalablevit/scalablevit_tinycfg.synth.feats_{size}.pt")
    with torch.no_grad():
        final, maps = model.forward_intermediates(load_tensor(INPUTS[size]))
        pooled = final.mean(dim=(2, 3))
        logits = model.forward_head(final)
    assert len(maps) == 4
    for i, out in enumerate(maps):
        torch.testing.assert_close(out, ref[f"stage{i + 1}"], **TOL)
    torch.testing.assert_close(pooled, ref["pooled_pre_head"], **TOL)
    torch.testing.assert_close(logits, ref["logits"], **TOL)


def test_golden_dense_form() -> None:
    """The features_only form loads the official classification checkpoint (norm/head dropped) and gives its maps."""
    model = _tinycfg(features_only=True)
    assert not any(k.startswith(("norm.", "head.")) for k in model.state_dict())
    ref = load_tensor("scalablevit/scalablevit_tinycfg.synth.feats_224x448.pt")
    with torch.no_grad():
        maps = model(load_tensor(INPUTS["224x448"]))
    assert [m.shape[1] for m in maps] == [info["num_chs"] for info in model.feature_info]
    for i, out in enumerate(maps):
        torch.testing.assert_close(out, ref[f"stage{i + 1}"], **TOL)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_keys_order_and_parameter_count(name: str) -> None:
    with torch.device("meta"):
        model = getattr(scalable_vit, name)()
    manifest = _manifest(name.replace("scalable_vit", "scalablevit"))
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(k, s) for k, s in manifest]
    assert sum(p.numel() for p in model.parameters()) == VARIANTS[name]


def test_tinycfg_keys_order_and_parameter_count() -> None:
    with torch.device("meta"):
        model = ScalableViT(**TINYCFG)
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [
        (k, s) for k, s in _manifest("scalablevit_tinycfg")
    ]
    assert sum(p.numel() for p in model.parameters()) == 4_088_074


@pytest.mark.parametrize(
    "name", [n if n.startswith("scalable_vit_small") else pytest.param(n, marks=pytest.mark.slow) for n in VARIANTS]
)
def test_official_checkpoint_loads(name: str) -> None:
    """An official checkpoint (``{"model": ...}``) loads strictly, also into the dense and the 0-class forms."""
    official = {"model": synth_state_dict(_manifest(name.replace("scalable_vit", "scalablevit")))}
    for kwargs in ({}, dict(num_classes=0), dict(features_only=True)):
        with torch.device("meta"):
            model = getattr(scalable_vit, name)(**kwargs)
        model.load_state_dict(checkpoint_filter_fn(official, model), strict=True, assign=True)
        assert torch.equal(model.patch_embeds[0].proj.weight, official["model"]["patch_embeds.0.proj.weight"])


def _iwsa_window_by_window(attn: IWSA, x: torch.Tensor) -> torch.Tensor:
    """IWSA without padding: attention inside each window over its real tokens only (smaller windows at the edges)."""
    b, h, w, c = x.shape
    ws, nh = attn.window_size, attn.num_heads
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    out = torch.empty(b, h, w, c)
    for i in range(0, h, ws):
        for j in range(0, w, ws):
            win_h, win_w = min(ws, h - i), min(ws, w - j)
            qw, kw, vw = (t[:, i : i + ws, j : j + ws].reshape(b, -1, nh, c // nh).transpose(1, 2) for t in (q, k, v))
            scores = (qw @ kw.transpose(-2, -1) * attn.scale).softmax(dim=-1)
            out[:, i : i + win_h, j : j + win_w] = (scores @ vw).transpose(1, 2).reshape(b, win_h, win_w, c)
    lim = attn.lim_func(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return attn.proj(out + lim)


@pytest.mark.parametrize("size", [(10, 12), (7, 15), (14, 21), (3, 5)])
def test_iwsa_padding_is_masked_out(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    attn = IWSA(dim=16, num_heads=2, window_size=7).eval()
    x = torch.randn(2, *size, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _iwsa_window_by_window(attn, x), atol=1e-5, rtol=1e-5)


def test_window_masks_are_cached_and_absent_without_padding() -> None:
    assert scalable_vit._window_key_mask(14, 21, 7, torch.device("cpu"), torch.float32) is None
    mask = scalable_vit._window_key_mask(10, 12, 7, torch.device("cpu"), torch.float32)
    assert mask is scalable_vit._window_key_mask(10, 12, 7, torch.device("cpu"), torch.float32)
    assert mask is not scalable_vit._window_key_mask(10, 12, 7, torch.device("cpu"), torch.bfloat16)
    assert mask.shape == (4, 1, 1, 49)
    assert torch.isinf(mask).sum().item() == 4 * 49 - 10 * 12


def test_mask_made_in_inference_mode_serves_training() -> None:
    """A mask first built during validation (inference mode) is a normal tensor, usable by autograd later."""
    scalable_vit._window_key_mask.cache_clear()
    with torch.inference_mode():
        mask = scalable_vit._window_key_mask(9, 11, 7, torch.device("cpu"), torch.float32)
    assert not mask.is_inference()
    q = torch.randn(4, 1, 49, 8, requires_grad=True)
    F.scaled_dot_product_attention(q, q, q, attn_mask=mask).sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("c_ratio", [2.0, 0.5])
def test_ssa_with_unequal_head_widths_is_exact_attention(c_ratio: float) -> None:
    """SSA pads the narrower of q/k and v for the fused kernels; the result is the plain softmax attention."""
    torch.manual_seed(0)
    attn = SSA(dim=32, num_heads=2, sr_ratio=2, c_ratio=c_ratio).eval()
    x = torch.randn(2, 6, 10, 32)
    with torch.no_grad():
        kv = attn.norm_act(attn.reduction(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2))  # (B, 15, C')
        q = attn.q(x).reshape(2, 60, 2, -1).transpose(1, 2)
        k = attn.k(kv).reshape(2, 15, 2, -1).transpose(1, 2)
        v = attn.v(kv).reshape(2, 15, 2, -1).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1) * (16 * c_ratio) ** -0.5).softmax(dim=-1)
        ref = attn.proj((scores @ v).transpose(1, 2).reshape(2, 6, 10, 32))
        torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(32, 32), (250, 330), (61, 227), (224, 231)])
def test_any_size(size: tuple[int, int]) -> None:
    """Patch embeddings give ceil(H / stride): the official H / 4, H / 8, ... whenever those divide."""
    model = scalable_vit.test_scalable_vit(num_classes=5).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        logits = model(x)
    assert [tuple(m.shape[-2:]) for m in maps] == [
        (math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in (4, 8, 16, 32)
    ]
    assert logits.shape == (1, 5) and torch.isfinite(logits).all()


def test_too_small_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 32x32"):
        scalable_vit.test_scalable_vit()(torch.randn(1, 3, 16, 64))


def test_mlp_head_pre_logits_and_reset_classifier() -> None:
    """The 4096-wide MLP head (128 in the test variant): pre-logits are its hidden layer, which reset keeps."""
    model = scalable_vit.test_scalable_vit(num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), model(x))
        hidden = model.forward_head(features, pre_logits=True)
        assert hidden.shape == (2, model.head_hidden_size) == (2, 128)
        torch.testing.assert_close(model.get_classifier()(hidden), model(x))
        hidden_layer = model.head[0].weight
        model.reset_classifier(0)
        assert model.head[0].weight is hidden_layer
        torch.testing.assert_close(model(x), hidden)
    plain = scalable_vit.test_scalable_vit(num_classes=7, head_hidden_size=None)
    assert isinstance(plain.head, torch.nn.Linear) and plain.head.in_features == plain.num_features == 64


def test_intermediate_indices_and_norm() -> None:
    model = scalable_vit.test_scalable_vit().eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, norm=True)
        torch.testing.assert_close(maps[-1], final)
        torch.testing.assert_close(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two[0], maps[2])
        first = model.forward_intermediates(x, indices=[0], intermediates_only=True, output_fmt="NHWC")
        torch.testing.assert_close(first[0], maps[0].permute(0, 2, 3, 1))


def test_no_weight_decay_is_the_peg() -> None:
    model = scalable_vit.test_scalable_vit()
    names = model.no_weight_decay()
    assert names == {f"pos_block.{i}.proj.0.{p}" for i in range(4) for p in ("weight", "bias")}
    assert names <= dict(model.named_parameters()).keys()


def test_group_matcher_covers_every_parameter() -> None:
    model = scalable_vit.test_scalable_vit()
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert sorted(n for names in groups.values() for n in names) == sorted(n for n, _ in model.named_parameters())
    assert groups[0] == [n for n, _ in model.named_parameters() if n.startswith("patch_embeds.0.")]


def test_grad_checkpointing_gives_the_same_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = scalable_vit.test_scalable_vit(num_classes=3).train()
    x = torch.randn(2, 3, 64, 80)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    calls = []
    monkeypatch.setattr(scalable_vit, "checkpoint", lambda *a, **kw: calls.append(kw) or checkpoint(*a, **kw))
    model.set_grad_checkpointing()
    model(x).sum().backward()
    assert calls == [dict(use_reentrant=False)] * 8  # every block
    for a, b in zip(ref, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b)


def test_timm_registry() -> None:
    """Registered in timm as well; timm's pretrained-cfg kwargs are accepted, hub weights are refused clearly."""
    model = timm.create_model("test_scalable_vit", num_classes=4)
    assert isinstance(model, ScalableViT) and model.num_classes == 4
    model = scalable_vit.test_scalable_vit(pretrained_cfg={}, pretrained_cfg_overlay=None, cache_dir="/nowhere")
    assert isinstance(model, ScalableViT)
    with pytest.raises(ValueError, match="pretrained="):
        scalable_vit.scalable_vit_small(pretrained=True)


def test_init_follows_official() -> None:
    torch.manual_seed(0)
    model = scalable_vit.scalable_vit_small()
    assert model.head[1].weight.eq(1).all() and model.stages[2][1].attn.k.bias.eq(0).all()
    assert abs(model.stages[2][0].mlp.fc1.weight.std().item() - 0.02) < 1e-3
    conv = model.patch_embeds[1].proj.weight  # fan_out = 3 * 3 * 128
    assert abs(conv.std().item() - math.sqrt(2 / (9 * 128))) < 2e-3
