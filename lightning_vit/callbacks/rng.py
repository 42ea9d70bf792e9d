"""The random-number generators' states travel with every checkpoint, so a resumed run draws what the original would."""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["RandomState"]


class RandomState(Callback):
    """Saves the Python, NumPy and torch (CPU, and CUDA where present) generator states in each checkpoint and
    restores them when a run resumes from it.

    Dropout, drop path and batch-level mixup / cutmix draw from these global generators; data loading does not
    (see :class:`~lightning_vit.datamodules.base.EpochSampler`), so with both a run resumed from a checkpoint
    written part-way into an epoch continues exactly as the uninterrupted run would, given the same seed.
    """

    def state_dict(self) -> dict:
        """The states as tensors and plain Python values, which ``torch.load(weights_only=True)`` accepts."""
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": pos,
                "has_gauss": has_gauss,
                "gauss": gauss,
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
        n = state_dict["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
