"""Loading checkpoints: nesting and prefixes, classifier re-initialisation, refusal of code-running pickles."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from lightning_vit.backbones import create_backbone
from lightning_vit.backbones.pretrained import PretrainedError, extract_state_dict


class Exploit:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def _weights(num_classes: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_backbone("test_coat_lite", num_classes=num_classes).state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"state_dict": {f"backbone.{k}": v for k, v in sd.items()}, "hyper_parameters": {}},
        lambda sd: {"model_ema": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "model", "lightning", "ema_ddp"],
)
def test_nested_and_prefixed_checkpoints_load(wrap, tmp_path: Path) -> None:
    sd = _weights()
    torch.save(wrap(sd), tmp_path / "w.pth")
    model = create_backbone("test_coat_lite", num_classes=4, pretrained=str(tmp_path / "w.pth"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k], msg=k)


def test_task_checkpoint_keeps_only_the_backbone() -> None:
    state = {"backbone.head.weight": torch.zeros(2, 3), "decode_head.conv.weight": torch.zeros(1)}
    assert set(extract_state_dict({"state_dict": state})) == {"head.weight"}


def test_other_number_of_classes_reinitialises_the_classifier(tmp_path: Path, caplog) -> None:
    sd = _weights(num_classes=4)
    torch.save(sd, tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING):  # a warning: an INFO record reaches no handler outside pytest
        model = create_backbone("test_coat_lite", num_classes=9, pretrained=str(tmp_path / "w.pth"))
    assert model.head.weight.shape == (9, 64)
    torch.testing.assert_close(model.patch_embed1.proj.weight, sd["patch_embed1.proj.weight"])
    assert "classifier re-initialised" in caplog.text and "head.weight" in caplog.text
    assert "missing keys" not in caplog.text  # the head is re-initialised, not missing


def test_weights_of_another_family_are_an_error_not_a_silent_fresh_start(tmp_path: Path) -> None:
    torch.save(_weights(num_classes=4), tmp_path / "coat.pth")
    with pytest.raises(PretrainedError, match=r"coat\.pth shares too few weights with test_swin \(2 of its \d+"):
        create_backbone("test_swin", num_classes=4, pretrained=str(tmp_path / "coat.pth"))
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(PretrainedError, match=r"noise\.pth is not a readable checkpoint"):
        create_backbone("test_swin", pretrained=str(tmp_path / "noise.pth"))


def test_code_running_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": _weights(), "payload": Exploit()}, path)
    with pytest.raises(PretrainedError, match="refusing to load .*evil.pth"):
        create_backbone("test_coat_lite", num_classes=4, pretrained=str(path))


def test_safetensors_without_alias_keys_and_wrong_files(tmp_path: Path, caplog) -> None:
    """safetensors stores a shared tensor once (CoaT's cpe/crpe); the other names are not reported missing."""
    from safetensors.torch import save_file

    sd, seen = _weights(), set()
    deduplicated = {k: v for k, v in sd.items() if not (v.data_ptr() in seen or seen.add(v.data_ptr()))}
    assert len(deduplicated) < len(sd)
    save_file(deduplicated, str(tmp_path / "w.safetensors"))
    with caplog.at_level(logging.WARNING):
        model = create_backbone("test_coat_lite", num_classes=4, pretrained=str(tmp_path / "w.safetensors"))
    assert "missing keys" not in caplog.text
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, sd[k], msg=k)
    with pytest.raises(PretrainedError, match="does not exist|is not a file"):
        create_backbone("test_coat_lite", pretrained=str(tmp_path / "missing.pth"))
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "alien.pth")
    with pytest.raises(PretrainedError, match="shares too few weights"):
        create_backbone("test_coat_lite", pretrained=str(tmp_path / "alien.pth"))
