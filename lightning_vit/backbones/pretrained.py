"""Load official, timm or project checkpoints into a backbone, from a file, a URL or timm's hub.

Files are read with ``torch.load(weights_only=True)`` (or safetensors): a pickle that would run code is refused.
The state_dict may be nested under ``state_dict`` (Lightning), ``model``, ``model_ema`` or ``module`` and may carry
``module.`` / ``model.`` / ``backbone.`` prefixes. The family's ``checkpoint_filter_fn`` then converts the keys;
a classifier whose shape differs (another number of classes) is left at its fresh initialisation.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
import torch.nn as nn

from lightning_vit.errors import shorten

__all__ = ["PretrainedError", "load_pretrained", "read_checkpoint", "extract_state_dict"]

log = logging.getLogger(__name__)

NESTING_KEYS = ("state_dict", "model_ema", "model", "module", "state_dict_ema")
PREFIXES = ("module.", "model.", "backbone.", "_orig_mod.")


class PretrainedError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the source."""


def read_checkpoint(source: str | Path) -> dict:
    """Read a checkpoint file or URL safely (``weights_only=True``; safetensors by extension)."""
    source = str(source)
    if source.startswith(("http://", "https://")):
        try:
            return torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as err:
            raise PretrainedError(f"pretrained: cannot download {source}: {err}") from err
    path = Path(source)
    if not path.is_file():
        where = "" if path.is_absolute() else f", looked in {Path.cwd()}"
        expected = ".pth/.pt/.bin/.safetensors/.ckpt"
        raise PretrainedError(f"pretrained: {path} is not a file (expected a {expected}{where})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # not a pickle at all (weights-only loading names refused globals)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PretrainedError(f"pretrained: {path} is not a readable checkpoint: {first}") from err
        raise PretrainedError(
            f"pretrained: refusing to load {path}: it is not a plain weights file (its pickle would run code or "
            f"build objects other than tensors). Re-save it with torch.save(model.state_dict(), ...)"
        ) from err
    except Exception as err:  # a file that is no pickle fails anywhere in the unpickler (IndexError, KeyError...)
        raise PretrainedError(f"pretrained: {path} is not a readable checkpoint: {type(err).__name__}: {err}") from err


def extract_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Unwrap the nesting and key prefixes of common checkpoint formats; returns a flat {key: tensor}."""
    state = checkpoint
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in NESTING_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
        elif any(k.startswith(prefix) for k in state) and prefix == "backbone.":
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}  # a task checkpoint
    return state


def _timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    import timm

    if not timm.is_model(name) or timm.models.get_pretrained_cfg(name) is None:
        raise PretrainedError(f"pretrained: timm has no released weights for {name!r}; pass a checkpoint file")
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as err:  # the hub is unreachable offline; its client raises many error types
        raise PretrainedError(
            f"pretrained: could not fetch timm's weights for {name!r} ({type(err).__name__}: {err}). Without "
            "network access, download them elsewhere and pass the file path instead"
        ) from err


def load_pretrained(model: nn.Module, source: str, name: str) -> tuple[list[str], list[str]]:
    """Load ``source`` into ``model`` (backbone ``name``); returns and logs the missing and unexpected keys."""
    from lightning_vit.backbones._registry import backbone_family

    state = _timm_state_dict(name) if source == "timm" else extract_state_dict(read_checkpoint(source))
    state = backbone_family(name).checkpoint_filter_fn(state, model)
    own = model.state_dict()
    classifier = {f"{n}.{p}" for n in ("head", "head.fc") for p in ("weight", "bias")}
    mismatched = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    for key in mismatched:
        if not (key in classifier or key.startswith(("head.", "aggregate."))):
            raise PretrainedError(
                f"pretrained: {source}: {key} has shape {tuple(state[key].shape)}, the model expects "
                f"{tuple(own[key].shape)} (is it a checkpoint of another variant than {name}?)"
            )
        del state[key]
    result = model.load_state_dict(state, strict=False)
    loaded = {own[k].data_ptr() for k in state if k in own}
    # a shared tensor's other names are loaded too; a re-initialised classifier is reported as such
    missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded and k not in mismatched]
    if mismatched:
        log.warning("pretrained %s: classifier re-initialised (%s: other number of classes)", source, mismatched)

    def is_body(key: str) -> bool:
        return key not in classifier and not key.startswith(("head.", "aggregate."))

    body = [k for k in own if is_body(k)]
    loaded_body = len(body) - len([k for k in missing if is_body(k)])
    if loaded_body * 2 < len(body):  # another family shares at most a final norm's names
        raise PretrainedError(
            f"pretrained: {source} shares too few weights with {name} ({loaded_body} of its {len(body)} tensors "
            f"outside the head; the file has {shorten(list(state))}): is it a checkpoint of this family?"
        )
    if missing:
        log.warning(
            "pretrained %s: %d missing keys (left at initialisation): %s", source, len(missing), shorten(missing)
        )
    if result.unexpected_keys:
        unexpected = result.unexpected_keys
        log.warning("pretrained %s: %d unexpected keys (ignored): %s", source, len(unexpected), shorten(unexpected))
    return missing, result.unexpected_keys
