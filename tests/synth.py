"""The deterministic "synth" weights of ../shared/reference/golden/README.md, and golden-file helpers."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "golden"


def synth_tensor(key: str, shape: list[int]) -> torch.Tensor:
    """The tensor the golden files' weight rule gives to state_dict entry ``key`` of ``shape``."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    r = torch.randn(shape, generator=g, dtype=torch.float32)
    if len(shape) == 4:
        return r / math.sqrt(math.prod(shape[1:]))
    if len(shape) in (2, 3):
        return r / math.sqrt(shape[-1])
    if len(shape) == 1 and key.endswith(".weight"):
        return 1.0 + 0.1 * r
    return 0.02 * r


def synth_state_dict(manifest: list, aliases: list | tuple = ()) -> dict[str, torch.Tensor]:
    """Synth weights for an official manifest ``[[key, shape], ...]``; alias groups share their first key's tensor."""
    source = {k: group[0] for group in aliases for k in group}
    shapes = {k: s for k, s in manifest}
    return {
        k: synth_tensor(source.get(k, k), shapes[source.get(k, k)])
        for k, _ in manifest
        if k.rsplit(".", 1)[-1] not in ("relative_position_index", "attn_mask")
    }


def load_json(relpath: str) -> list:
    return json.loads((GOLDEN / relpath).read_text())


def load_tensor(relpath: str):
    return torch.load(GOLDEN / relpath, map_location="cpu", weights_only=True)
