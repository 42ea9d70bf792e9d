"""The backbone contract, checked on every registered ``test_*`` variant."""

from __future__ import annotations

import pytest
import torch

from lightning_vit.backbones import create_backbone, list_backbones

TINY = list_backbones("test_*")


def _model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone(name, **kwargs)


def test_every_family_has_a_tiny_variant() -> None:
    assert {"test_coat", "test_coat_lite", "test_patchconvnet", "test_scalable_vit", "test_swin"} <= set(TINY)


@pytest.mark.parametrize("name", TINY)
def test_logits_features_and_head_agree(name: str) -> None:
    model = _model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        final, maps = model.forward_intermediates(x)
        features = model.forward_features(x)
        assert logits.shape == (2, 7) and torch.isfinite(logits).all()
        torch.testing.assert_close(model.forward_head(features), logits)
        as_list = lambda t: t if isinstance(t, list) else [t]  # noqa: E731  (CoaT's final features are a list)
        for a, b in zip(as_list(final), as_list(features)):
            torch.testing.assert_close(a, b)
        width = getattr(model, "head_hidden_size", model.num_features)  # timm: an MLP head's hidden width
        assert model.forward_head(features, pre_logits=True).shape == (2, width)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", [(64, 64), (97, 131), (32, 200)])
def test_intermediates_match_feature_info_at_any_size(name: str, size: tuple[int, int]) -> None:
    model = _model(name).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert len(maps) == len(model.feature_info)
    for m, info in zip(maps, model.feature_info):
        assert m.ndim == 4 and m.shape[1] == info["num_chs"]
        for got, full in zip(m.shape[-2:], size):
            assert abs(got - full / info["reduction"]) <= 1, (m.shape, size, info)
        assert torch.isfinite(m).all()


@pytest.mark.parametrize("name", TINY)
def test_indices_select_stages(name: str) -> None:
    model = _model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        every = model.forward_intermediates(x, intermediates_only=True)
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
    assert len(last) == 1
    torch.testing.assert_close(last[0], every[-1])


@pytest.mark.parametrize("name", TINY)
def test_features_only_form(name: str) -> None:
    model = _model(name, features_only=True).eval()
    assert model.num_classes == 0
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 75, 90))
    assert [m.shape[1] for m in maps] == [i["num_chs"] for i in model.feature_info]


@pytest.mark.parametrize("name", TINY)
def test_every_parameter_gets_a_gradient_and_checkpointing_changes_nothing(name: str) -> None:
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for checkpointing in (False, True):
        model = _model(name, num_classes=3).train()
        model.set_grad_checkpointing(checkpointing)
        model(x).logsumexp(-1).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"no gradient: {missing}"
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", TINY)
def test_reset_classifier_and_no_weight_decay_names(name: str) -> None:
    model = _model(name, num_classes=3)
    model.reset_classifier(11)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 11)
    params = [n for n, _ in model.named_parameters()]
    for skip in model.no_weight_decay():
        assert any(p == skip or p.startswith(skip + ".") for p in params), skip


@pytest.mark.parametrize("name", TINY)
def test_state_dict_round_trip_through_a_file(name: str, tmp_path) -> None:
    """Saved to disk and loaded back through ``create_backbone(pretrained=...)``, outputs are identical."""
    model = _model(name, num_classes=4).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    torch.manual_seed(1)
    loaded = create_backbone(name, num_classes=4, pretrained=str(tmp_path / "weights.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize(
    ("dtype", "mask_grad", "dq", "dv"),
    [
        (torch.float32, False, 16, 16),
        (torch.float32, True, 16, 16),
        (torch.bfloat16, False, 16, 8),
        (torch.bfloat16, True, 8, 16),
    ],
)
def test_attention_routes_agree_with_float64_reference(dtype, mask_grad, dq, dv) -> None:
    """Every route of the shared ``attention`` (SDPA, SDPA with padded head widths, the plain ops CPU takes for
    bf16 or a learned mask) computes softmax(q k^T s + m) v and its gradients."""
    from lightning_vit.backbones._layers import attention

    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 10, dq), torch.randn(2, 3, 12, dq)
    v, mask = torch.randn(2, 3, 12, dv), torch.randn(1, 3, 10, 12)
    inputs = [t.requires_grad_() for t in (q, k, v, mask)]
    out = attention(*(t.to(dtype) for t in (q, k, v)), 0.3, mask.to(dtype) if mask_grad else mask.detach().to(dtype))
    ref = torch.softmax(q.double() @ k.double().transpose(-2, -1) * 0.3 + mask.double(), -1) @ v.double()
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref, **tol)
    with torch.no_grad():  # unmasked inference over short windows takes the plain ops in fp32 too
        plain = attention(*(t.to(dtype) for t in (q, k, v)), 0.3)
        unmasked = torch.softmax(q.double() @ k.double().transpose(-2, -1) * 0.3, -1) @ v.double()
    torch.testing.assert_close(plain.double(), unmasked, **tol)
    grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad(out.double(), inputs[:3], grad_out)
    ref_grads = torch.autograd.grad(ref, inputs[:3], grad_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r.double(), **{k: 5 * t for k, t in tol.items()})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_grad", [False, True])
@pytest.mark.parametrize("mask_dtype", [None, torch.float32])
@pytest.mark.parametrize("route", ["auto", "sdpa"])
def test_attention_per_window_mask_and_wider_mask(monkeypatch, dtype, mask_grad, mask_dtype, route) -> None:
    """A mask of M windows applies to batch entry i as mask[i % M] (window_partition order) on every route (the
    one CPU picks, and SDPA's, which CUDA takes), with its gradient summed over the batch; an fp32 mask on bf16
    inputs takes the softmax in fp32 (closer to the float64 reference than the bf16 mask's route) and returns v's
    dtype."""
    from lightning_vit.backbones import _layers
    from lightning_vit.backbones._layers import attention

    if route == "sdpa":
        if dtype == torch.bfloat16 and mask_dtype is not None:
            pytest.skip("SDPA takes the mask in q's dtype: the wider mask's softmax is the plain ops' own")
        monkeypatch.setattr(_layers, "_plain_ops_faster", lambda q, k, m: False)
    torch.manual_seed(0)
    batch, windows = 3, 4
    q, k, v = (torch.randn(batch * windows, 2, 9, 8) for _ in range(3))
    mask = torch.randn(windows, 2, 9, 9).requires_grad_(mask_grad)
    full = mask.double().repeat(batch, 1, 1, 1)  # (B*M, ...): entry i gets mask[i % M]
    ref = torch.softmax(q.double() @ k.double().transpose(-2, -1) * 0.3 + full, -1) @ v.double()
    with torch.set_grad_enabled(mask_grad):
        out = attention(*(t.to(dtype) for t in (q, k, v)), 0.3, mask.to(mask_dtype or dtype))
    assert out.dtype == dtype and out.shape == ref.shape
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref, **tol)
    if mask_grad:
        grad_out = torch.randn_like(ref)
        (grad,) = torch.autograd.grad(out.double(), mask, grad_out)
        (ref_grad,) = torch.autograd.grad(ref, mask, grad_out)
        torch.testing.assert_close(grad.double(), ref_grad.double(), **{k: 5 * t for k, t in tol.items()})
    if dtype == torch.bfloat16 and mask_dtype is not None:  # the fp32 softmax: closer to the reference
        narrow = attention(*(t.to(dtype) for t in (q, k, v)), 0.3, mask.detach().to(dtype))
        assert (out.double() - ref).abs().mean() < (narrow.double() - ref).abs().mean()


@pytest.fixture
def onednn_calls(monkeypatch) -> list[str]:
    """The activation (``"none"``, ``"gelu"``) of every call to oneDNN's linear from ``_layers``, which still
    computes it; skips where this torch build has no oneDNN linear."""
    from lightning_vit.backbones import _layers

    if _layers._ONEDNN_LINEAR is None:
        pytest.skip("this torch build has no oneDNN linear")
    calls = []
    monkeypatch.setattr(
        _layers, "_ONEDNN_LINEAR", lambda *a: calls.append(a[3]) or torch.ops.mkldnn._linear_pointwise(*a)
    )
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("needs_grad", [False, True])
@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("onednn_gradients", [True, False])
def test_linear_routes_agree_with_float64_reference(
    monkeypatch, onednn_calls, dtype, needs_grad, activation, bias, onednn_gradients
) -> None:
    """The shared ``linear`` computes F.linear (+ exact GELU) and its gradients on every route, under autocast as
    a model runs in bf16, on 3-d non-contiguous input, whichever library serves fp32 gradients on this processor;
    oneDNN serves the CPU calls it claims to serve."""
    from lightning_vit.backbones import _layers

    monkeypatch.setattr(_layers, "_onednn_fp32_gradients", lambda: onednn_gradients)
    monkeypatch.setattr(_layers, "_avx512", lambda: True)  # without avx512 every call is F.linear (test below)
    torch.manual_seed(0)
    x = torch.randn(5, 3, 16).transpose(0, 1).requires_grad_(needs_grad)  # (3, 5, 16), not contiguous
    w, b = torch.randn(24, 16).requires_grad_(needs_grad), torch.randn(24).requires_grad_(needs_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = _layers.linear(x, w, b if bias else None, activation)
    ref = x.double() @ w.double().t() + (b.double() if bias else 0)
    ref = torch.nn.functional.gelu(ref) if activation else ref
    tol = dict(atol=0.1, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    assert out.dtype == dtype and out.shape == (3, 5, 24)
    torch.testing.assert_close(out.double(), ref, **tol)
    # oneDNN: calls without gradient, GELU fused; fp32 calls with gradient too where MKL is not the faster; bf16
    # calls only where oneDNN runs bf16 on this processor (not on AVX2-only ones)
    if dtype == torch.bfloat16 and not _layers.cpu_bf16_kernels():
        assert onednn_calls == []
    elif not needs_grad:
        assert onednn_calls == [activation or "none"]
    else:
        assert onednn_calls == (["none"] if dtype == torch.float32 and onednn_gradients else [])
    if needs_grad:
        inputs = (x, w, b) if bias else (x, w)
        grad_out = torch.randn_like(ref)
        grads = torch.autograd.grad(out, inputs, grad_out.to(dtype))
        ref_grads = torch.autograd.grad(ref, inputs, grad_out)
        for g, r in zip(grads, ref_grads):
            assert g.dtype == torch.float32
            torch.testing.assert_close(g.double(), r.double(), **{k: 5 * t for k, t in tol.items()})


@pytest.mark.parametrize("bf16_supported", [False, True])
def test_bf16_linears_leave_onednn_where_it_cannot_run_them(monkeypatch, bf16_supported: bool) -> None:
    """On a processor without avx512 oneDNN cannot build a bf16 matmul (it raises): bf16 calls take F.linear
    there, with the same values; fp32 calls keep oneDNN."""
    from lightning_vit.backbones import _layers

    if _layers._ONEDNN_LINEAR is None:
        pytest.skip("this torch build has no oneDNN linear")
    if bf16_supported and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN runs no bf16 matmul on this processor")
    calls = []
    monkeypatch.setattr(
        _layers, "_ONEDNN_LINEAR", lambda *a: calls.append(a[0].dtype) or torch.ops.mkldnn._linear_pointwise(*a)
    )
    monkeypatch.setattr(_layers, "cpu_bf16_kernels", lambda: bf16_supported)
    monkeypatch.setattr(_layers, "_avx512", lambda: True)  # fp32 inference takes oneDNN (AVX2: test below)
    layer = _layers.Linear(16, 8)
    x = torch.randn(6, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=0.05, rtol=2e-2)
    with torch.no_grad():
        layer(x)
    assert calls == ([torch.bfloat16] if bf16_supported else []) + [torch.float32]


@pytest.mark.parametrize("avx512", [True, False])
@pytest.mark.parametrize("needs_grad", [False, True])
def test_fp32_linears_without_avx512_take_mkl(
    monkeypatch, onednn_calls: list[str], avx512: bool, needs_grad: bool
) -> None:
    """On an AMD processor with avx512 oneDNN serves fp32 linears, GELU fused without a gradient, forward and
    input gradient with one; on an AVX2-only one MKL's F.linear serves them all; values and gradients agree."""
    from lightning_vit.backbones import _layers

    monkeypatch.setattr(_layers, "_onednn_fp32_gradients", lambda: True)
    monkeypatch.setattr(_layers, "_avx512", lambda: avx512)
    torch.manual_seed(0)
    x = torch.randn(12, 2, 16).transpose(0, 1).requires_grad_(needs_grad)  # (2, 12, 16), not contiguous
    w, b = torch.randn(8, 16), torch.randn(8)
    with torch.set_grad_enabled(needs_grad):
        for activation in (None, "gelu"):
            out = _layers.linear(x, w, b, activation)
            ref = torch.nn.functional.linear(x, w, b)
            ref = torch.nn.functional.gelu(ref) if activation else ref
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            if needs_grad:
                grad_out = torch.randn_like(out)
                torch.testing.assert_close(*(torch.autograd.grad(y, x, grad_out)[0] for y in (out, ref)))
    if not avx512:
        assert onednn_calls == []
    else:  # with a gradient: forward and input gradient, GELU on its own
        assert onednn_calls == (["none"] * 4 if needs_grad else ["none", "gelu"])


@pytest.mark.parametrize(
    ("avx512", "grad", "autocast", "chunked"),
    [
        (False, False, False, True),
        (True, False, False, False),
        (False, True, False, False),
        (False, False, True, False),
    ],
)
def test_mlp_inference_over_large_maps_runs_in_chunks_without_avx512(monkeypatch, avx512, grad, autocast, chunked):
    """An fp32 inference MLP whose hidden map reaches ``_AVX2_CHUNKED_MLP_ELEMENTS`` runs in row chunks of
    ``_MLP_CHUNK_ELEMENTS`` hidden values on a processor without avx512, with the whole MLP's values (dropout
    included: identity in eval); with avx512, a gradient or autocast it runs whole."""
    from lightning_vit.backbones import _layers

    chunks = []
    monkeypatch.setattr(_layers, "_avx512", lambda: avx512)
    monkeypatch.setattr(_layers, "_AVX2_CHUNKED_MLP_ELEMENTS", 2 * 25 * 32)  # the map below: 50 rows x 32
    monkeypatch.setattr(_layers, "_MLP_CHUNK_ELEMENTS", 16 * 32)  # 16 rows a chunk: 16, 16, 16 and 2
    torch.manual_seed(0)
    mlp = _layers.Mlp(12, 32, drop=0.5).eval()
    real_linear = _layers.linear

    def spy(x: torch.Tensor, *args, activation: str | None = None) -> torch.Tensor:  # fc1: the call with GELU
        if activation == "gelu":
            chunks.append(x.shape[0])
        return real_linear(x, *args, activation=activation)

    monkeypatch.setattr(_layers, "linear", spy)
    x = torch.randn(25, 2, 12).transpose(0, 1).requires_grad_(grad)  # (2, 25, 12), not contiguous
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), torch.set_grad_enabled(grad):
        out = mlp(x)
    ref = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x)))
    assert out.shape == (2, 25, 12)
    torch.testing.assert_close(out.float(), ref.float(), **(dict(atol=0.05, rtol=0.02) if autocast else {}))
    assert chunks == ([16, 16, 16, 2] if chunked else [2])  # fc1's rows per call (whole: the 3-d batch of 2)
    monkeypatch.setattr(_layers, "_AVX2_CHUNKED_MLP_ELEMENTS", 2 * 25 * 32 + 1)  # one value more: whole
    chunks.clear()
    with torch.no_grad():
        mlp(x)
    assert chunks == [2]


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD"])
def test_fp32_gradients_take_mkl_on_intel_and_onednn_elsewhere(
    monkeypatch, onednn_calls: list[str], vendor: str
) -> None:
    """Where the fp32 training matmuls go depends on the processor (MKL's fast kernels are Intel's); inference
    takes oneDNN (with avx512); the values and gradients are F.linear's on both routes."""
    from lightning_vit.backbones import _layers

    monkeypatch.setattr(_layers, "_cpu_vendor", lambda: vendor)
    monkeypatch.setattr(_layers, "_onednn_fp32_gradients", _layers._onednn_fp32_gradients.__wrapped__)
    monkeypatch.setattr(_layers, "_avx512", lambda: True)
    x = torch.randn(6, 16, requires_grad=True)
    layer = _layers.Linear(16, 8)
    out = layer(x)
    out.backward(torch.ones_like(out))
    ref = torch.nn.functional.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, torch.ones_like(out) @ layer.weight)
    assert onednn_calls == ([] if vendor == "GenuineIntel" else ["none", "none"])  # AMD: forward and input gradient
    with torch.no_grad():
        layer(x)
    assert onednn_calls[-1:] == ["none"]


@pytest.mark.parametrize(
    ("kernel", "stride", "fp32_in_training"), [(7, 1, True), (5, 1, True), (4, 4, True), (3, 1, False), (3, 2, True)]
)
def test_depthwise_conv_gradients_in_fp32_under_cpu_autocast(kernel: int, stride: int, fp32_in_training: bool) -> None:
    """DepthwiseConv2d is nn.Conv2d(groups=channels) with the same state dict and values; under bf16 autocast it
    computes in fp32 when a gradient is needed, except at 3x3 stride 1, and in bf16 without one; its gradients
    then agree with a float64 reference to fp32 accuracy."""
    from lightning_vit.backbones._layers import DepthwiseConv2d

    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, kernel, stride=stride, padding=kernel // 2)
    plain = torch.nn.Conv2d(6, 6, kernel, stride=stride, padding=kernel // 2, groups=6)
    plain.load_state_dict(conv.state_dict(), strict=True)
    assert list(conv.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 13, 11, 6).permute(0, 3, 1, 2)  # channels-last view, as the backbones pass it
    torch.testing.assert_close(conv(x), plain(x))

    xb = x.bfloat16().float().requires_grad_()  # bf16-exact input: the fp32 route then matches float64 closely
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(xb)
        with torch.no_grad():
            assert conv(xb).dtype == torch.bfloat16
    assert out.dtype == (torch.float32 if fp32_in_training else torch.bfloat16)
    ref = torch.nn.functional.conv2d(
        xb.double(), conv.weight.double(), conv.bias.double(), stride, kernel // 2, groups=6
    )
    grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (xb, conv.weight, conv.bias), grad_out.to(out.dtype))
    ref_grads = torch.autograd.grad(ref, (xb, conv.weight, conv.bias), grad_out)
    tol = dict(atol=1e-4, rtol=1e-4) if fp32_in_training else dict(atol=0.2, rtol=2e-2)
    torch.testing.assert_close(out.double(), ref, **tol)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), r.double(), **tol)


def test_linear_leaves_traced_and_empty_calls_to_f_linear(monkeypatch) -> None:
    """Traces (ONNX, TorchScript) must hold standard ops; an empty batch (no boxes) must not reach oneDNN."""
    from lightning_vit.backbones import _layers

    monkeypatch.setattr(_layers, "_ONEDNN_LINEAR", lambda *a: pytest.fail("oneDNN called"))
    layer = _layers.Linear(8, 4)
    x = torch.randn(2, 8)
    traced = torch.jit.trace(layer, x, check_trace=False)  # the check reruns the layer eagerly
    assert "mkldnn" not in str(traced.graph) and "linear" in str(traced.graph)
    torch.testing.assert_close(traced(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert _layers.linear(torch.randn(0, 8), layer.weight, layer.bias).shape == (0, 4)
    with pytest.raises(ValueError, match="activation"):
        _layers.linear(x, layer.weight, activation="relu")
