"""SimplePyramid: ViTDet's stride-16 -> strides 4/8/16/32 pyramid over a columnar backbone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_vit.backbones.patchconvnet import PatchConvNet
from lightning_vit.necks import SimplePyramid


@pytest.mark.parametrize("size", [(250, 330), (224, 224), (193, 517)])
def test_pyramid_over_patchconvnet_odd_sizes(size: tuple[int, int]) -> None:
    """Map sizes follow the stride-16 map (h, w) = ceil((H, W) / 16): 4x, 2x, 1x, and ceil(/2) = ceil((H, W) / 32)."""
    backbone = PatchConvNet(embed_dim=64, depth=2, features_only=True)
    neck = SimplePyramid(backbone.feature_info[-1]["num_chs"])
    maps = neck(backbone(torch.randn(1, 3, *size)))
    h, w = -(-size[0] // 16), -(-size[1] // 16)
    expected = [(16, 4 * h, 4 * w), (32, 2 * h, 2 * w), (64, h, w), (64, -(-size[0] // 32), -(-size[1] // 32))]
    assert [tuple(m.shape[1:]) for m in maps] == expected
    assert neck.out_channels == [16, 32, 64, 64]
    assert neck.feature_info == [dict(num_chs=c, reduction=r) for c, r in zip((16, 32, 64, 64), (4, 8, 16, 32))]


def test_levels() -> None:
    """Stride 16 is the input itself; stride 32 max-pools it, keeping an odd last row/column."""
    neck = SimplePyramid(32)
    x = torch.randn(2, 32, 7, 9)
    p4, p8, p16, p32 = neck([x])
    assert p16 is x
    torch.testing.assert_close(p32, F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 2))
    assert p8.shape == (2, 16, 14, 18) and p4.shape == (2, 8, 28, 36)


def test_out_channels_projection_and_gradients() -> None:
    """With out_channels each level is projected (ViTDet's 1x1 + LN + 3x3 + LN); every parameter gets a gradient."""
    backbone = PatchConvNet(embed_dim=64, depth=2, features_only=True)
    neck = SimplePyramid(64, out_channels=(24, 24, 24, 24))
    x = torch.randn(2, 3, 100, 70)
    maps = neck(backbone(x))
    assert [tuple(m.shape) for m in maps] == [(2, 24, 28, 20), (2, 24, 14, 10), (2, 24, 7, 5), (2, 24, 4, 3)]
    assert [f["num_chs"] for f in neck.feature_info] == [24] * 4
    sum(m.square().mean() for m in maps).backward()
    for name, p in [*neck.named_parameters(), *backbone.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        SimplePyramid(30)
    with pytest.raises(ValueError, match="4 entries"):
        SimplePyramid(32, out_channels=(8, 8))
    with pytest.raises(ValueError, match="one \\(B, 32, h, w\\) stride-16 map"):
        SimplePyramid(32)([torch.randn(1, 32, 4, 4), torch.randn(1, 32, 2, 2)])
    with pytest.raises(ValueError, match="one \\(B, 32, h, w\\) stride-16 map"):
        SimplePyramid(32)([torch.randn(1, 16, 4, 4)])
