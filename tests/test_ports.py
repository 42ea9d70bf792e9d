"""The official-style ports of lightning_vit.ports: same logits and gradients as ours, official golden logits."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn as nn
from synth import load_json, load_tensor, synth_state_dict

from lightning_vit.backbones import create_backbone
from lightning_vit.backbones.patchconvnet import PatchConvNet
from lightning_vit.backbones.scalable_vit import ScalableViT
from lightning_vit.ports import PORTS, PatchConvNetPort, ScalableViTPort, build_port

# name: (registered variant, extra constructor arguments); there is no registered multi-token test variant.
CASES = {
    "scalable_vit": ("test_scalable_vit", {}),
    "patchconvnet": ("test_patchconvnet", dict(num_classes=10)),
    "patchconvnet_multi": ("test_patchconvnet", dict(num_classes=7, multi_token=True)),
}
# The golden README's tiny official configurations (as tests/test_scalable_vit.py, tests/test_patchconvnet.py).
GOLDEN = {
    "scalablevit_tinycfg": (
        ScalableViT,
        dict(
            num_classes=10,
            embed_dims=(32, 64, 128, 256),
            num_heads=(1, 2, 4, 8),
            depths=(2, 2, 4, 2),
            c_ratios=(2, 0.5, 1.25, 1),
        ),
    ),
    "patchconvnet_tinycfg": (PatchConvNet, dict(embed_dim=96, depth=4, num_classes=10)),
    "patchconvnet_tinycfg_multi": (PatchConvNet, dict(embed_dim=96, depth=4, num_classes=1000, multi_token=True)),
}
INPUT_224 = "coat/input_seed1_2x3x224x224.pt"


def _tol(ref: torch.Tensor, floor: float = 1e-3) -> dict[str, float]:
    """fp32 tolerance: 1e-5 of the reference's scale (at least of ``floor``), absolute, plus 1e-4 relative."""
    return dict(atol=1e-5 * max(ref.abs().max().item(), floor), rtol=1e-4)


def _ours_and_port(case: str) -> tuple[nn.Module, nn.Module]:
    """Ours with the golden synth weights and its port.

    Unlike the initialisation (layer scales 1e-4, linears of std 0.02), the synth weights give the PatchConvNet trunk
    and the attention weights an effect on the logits well above the tolerance.
    """
    variant, extra = CASES[case]
    ours = create_backbone(variant, **extra)
    manifest = [(k, list(v.shape)) for k, v in ours.state_dict().items()]
    ours.load_state_dict(synth_state_dict(manifest), strict=True)
    return ours, build_port(ours)


def _images(h: int, w: int) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))


@pytest.mark.parametrize(
    "case, size",
    [
        ("scalable_vit", (224, 224)),
        ("scalable_vit", (448, 224)),
        ("patchconvnet", (224, 224)),
        ("patchconvnet_multi", (224, 224)),
    ],
)
def test_logits_equal_ours(case: str, size: tuple[int, int]) -> None:
    ours, port = _ours_and_port(case)
    ours.eval()
    port.eval()
    x = _images(*size)
    with torch.no_grad():
        ref, out = ours(x), port(x)
    assert out.shape == (2, CASES[case][1].get("num_classes", 1000))
    torch.testing.assert_close(out, ref, **_tol(ref))


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_equal_ours(case: str) -> None:
    """One training-mode backward of the same loss: every parameter's gradient, key for key."""
    ours, port = _ours_and_port(case)
    assert ours.training and port.training
    x = _images(224, 224)
    weights = None
    for model in (ours, port):
        out = model(x)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)) if weights is None else weights
        (out * weights).sum().backward()
    ours_grads = {n: p.grad for n, p in ours.named_parameters()}
    port_grads = {n: p.grad for n, p in port.named_parameters()}
    assert ours_grads.keys() == port_grads.keys()
    assert all(g is not None for g in (*ours_grads.values(), *port_grads.values()))
    # The attention key biases have zero gradient up to rounding (softmax ignores a shift common to all keys).
    floor = 1e-3 * max(g.abs().max().item() for g in ours_grads.values())
    for name, ref in ours_grads.items():
        tol = _tol(ref, floor)
        torch.testing.assert_close(port_grads[name], ref, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_logits(name: str) -> None:
    """The ports with the golden synth weights give the official code's logits."""
    model_cls, model_args = GOLDEN[name]
    port = PORTS[model_cls](**model_args).eval()
    keys = "scalablevit/scalablevit_tinycfg.keys.json" if model_cls is ScalableViT else f"patchconvnet/{name}.keys.json"
    port.load_state_dict(synth_state_dict(load_json(keys)), strict=True)
    folder = "scalablevit" if model_cls is ScalableViT else "patchconvnet"
    ref = load_tensor(f"{folder}/{name}.synth.logits.pt")
    with torch.no_grad():
        out = port(load_tensor(INPUT_224))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_golden_logits_non_square() -> None:
    port = ScalableViTPort(**GOLDEN["scalablevit_tinycfg"][1]).eval()
    port.load_state_dict(synth_state_dict(load_json("scalablevit/scalablevit_tinycfg.keys.json")), strict=True)
    ref = load_tensor("scalablevit/scalablevit_tinycfg.synth.feats_224x448.pt")["logits"]
    with torch.no_grad():
        out = port(load_tensor("scalablevit/input_seed2_2x3x224x448.pt"))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_cls, port_cls", list(PORTS.items()))
def test_port_takes_our_arguments_and_plain_layers(model_cls: type[nn.Module], port_cls: type[nn.Module]) -> None:
    """Same constructor keywords and defaults as ours; only nn.Linear itself, not our oneDNN subclass."""
    assert inspect.signature(port_cls.__init__).parameters == inspect.signature(model_cls.__init__).parameters
    case = "scalable_vit" if model_cls is ScalableViT else "patchconvnet"
    _, port = _ours_and_port(case)
    linears = [m for m in port.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear for m in linears)


@pytest.mark.parametrize("port_cls", [ScalableViTPort, PatchConvNetPort])
def test_features_only_is_refused(port_cls: type[nn.Module]) -> None:
    with pytest.raises(ValueError, match=f"{port_cls.__name__}: features_only=True"):
        port_cls(features_only=True)


@pytest.mark.parametrize(
    "case, size, match",
    [
        ("scalable_vit", (256, 256), "multiples of 224 .* got 256x256"),
        ("scalable_vit", (224, 336), "multiples of 224 .* got 224x336"),
        ("patchconvnet", (224, 320), "square token grid.* 224x320 input gives 14x20 tokens"),
    ],
)
def test_sizes_the_official_code_cannot_take_are_refused(case: str, size: tuple[int, int], match: str) -> None:
    ours, port = _ours_and_port(case)
    with torch.no_grad():
        assert torch.isfinite(ours.eval()(_images(*size))).all()  # ours takes any size
        with pytest.raises(ValueError, match=match):
            port.eval()(_images(*size))


def test_build_port_follows_device_dtype_and_mode() -> None:
    ours, _ = _ours_and_port("patchconvnet")
    port = build_port(ours.double().eval())
    assert not port.training and all(p.dtype == torch.float64 for p in port.parameters())


def test_build_port_of_an_unsupported_class() -> None:
    with pytest.raises(ValueError, match="no port of SwinTransformer"):
        build_port(create_backbone("test_swin"))


def test_build_port_needs_the_constructor_arguments() -> None:
    """create_backbone records them; a model built from its class alone has none to rebuild the port from."""
    ours = create_backbone("test_scalable_vit", num_classes=3)
    assert ours.model_args["num_classes"] == 3 and ours.model_args["depths"] == (2, 2, 2, 2)
    with pytest.raises(
        ValueError, match=r"no model_args \(its constructor arguments\): build it with lightning_vit.create_backbone"
    ):
        build_port(ScalableViT(depths=(1, 1, 1, 1)))
