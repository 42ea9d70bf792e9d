"""``torch.compile`` works on every family: the compiled ``test_*`` variant gives eager's logits and gradients.

One compilation per model, in train mode (no dropout or drop path, so eager and compiled compute the same thing):
logits and every parameter's gradient must match eager's. By default Dynamo captures the graphs and AOTAutograd
builds forward and backward (``aot_eager``) for two families; Inductor's code generation (the real
``torch.compile``), which takes minutes per model on two CPU cores, runs on all five with ``-m slow``.
"""

from __future__ import annotations

import pytest
import torch

from lightning_vit.backbones import create_backbone

VARIANTS = ["test_coat_lite", "test_patchconvnet", "test_coat", "test_swin", "test_scalable_vit"]
FAST = {"test_coat_lite", "test_patchconvnet"}
CASES = [
    pytest.param(backend, name, marks=() if backend == "aot_eager" and name in FAST else pytest.mark.slow)
    for backend in ("aot_eager", "inductor")
    for name in VARIANTS
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(("backend", "name"), CASES)
def test_compiled_model_matches_eager(backend: str, name: str) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=10, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 80)  # not square, not a multiple of Swin's or ScalableViT's windows
    ref = model(x)
    ref.square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    compiled = torch.compile(model, backend=backend)
    out = compiled(x)
    out.square().sum().backward()

    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {n} through the compiled model"
        torch.testing.assert_close(p.grad, ref_grads[n], atol=1e-4, rtol=1e-3, msg=f"{name}: gradient of {n}")
