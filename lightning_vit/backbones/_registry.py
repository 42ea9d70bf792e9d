"""Backbone registry: ``register_backbone`` / ``create_backbone`` / ``list_backbones``.

Every variant is a small function ``name(pretrained=False, **kwargs) -> nn.Module`` (the timm convention). The
registry remembers the family module of each variant so that ``create_backbone(..., pretrained=path)`` can convert
a checkpoint with that family's ``checkpoint_filter_fn``. Families that timm lacks are also registered in timm's
registry, so ``timm.create_model("scalable_vit_small")`` works once ``lightning_vit`` is imported.
"""

from __future__ import annotations

import difflib
import fnmatch
import sys
from collections.abc import Callable
from types import ModuleType

import torch.nn as nn

from lightning_vit.errors import OptionError

__all__ = ["register_backbone", "create_backbone", "list_backbones", "backbone_family", "build_model"]

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module] | None = None, *, timm_register: bool = False):
    """Register a variant function under its ``__name__``.

    Args:
        fn: the variant function.
        timm_register: also register it in timm's model registry (for families timm does not have).
    """

    def _register(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = f
        if timm_register:
            import timm.models

            if not timm.models.is_model(name):
                timm.models.register_model(f)
        return f

    return _register(fn) if fn is not None else _register


def list_backbones(pattern: str = "*") -> list[str]:
    """Names of the registered backbones matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _BACKBONES if fnmatch.fnmatch(n, pattern))


def backbone_family(name: str) -> ModuleType:
    """The module that defines backbone ``name`` (it holds the family's ``checkpoint_filter_fn``)."""
    _check_name(name)
    return sys.modules[_BACKBONES[name].__module__]


def create_backbone(name: str, *, pretrained: str | None = None, **kwargs) -> nn.Module:
    """Build a registered backbone.

    Args:
        name: a name from ``list_backbones()``, e.g. ``coat_lite_tiny``.
        pretrained: ``None``, a local checkpoint file, a URL, or ``"timm"`` (timm's hub weights of the same name).
        **kwargs: constructor arguments of the family, e.g. ``num_classes=10, drop_path_rate=0.1``.
    """
    _check_name(name)
    model = _BACKBONES[name](**kwargs)
    if pretrained:
        from lightning_vit.backbones.pretrained import load_pretrained

        load_pretrained(model, pretrained, name=name)
    return model


def build_model(model_cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """What every family's ``_create_*`` does: refuse hub weights (there are none here) and build ``model_cls``.

    The keys timm's ``create_model`` adds (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``) are dropped.
    The model keeps the keyword arguments it was built with as ``model_args``, which rebuild the same architecture
    (``lightning_vit.ports.build_port`` does).
    """
    if pretrained:
        raise ValueError(
            f"{variant}: no weights are downloaded here; pass a file, e.g. "
            f"lightning_vit.create_backbone({variant!r}, pretrained='path/to/checkpoint.pth')"
        )
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    model = model_cls(**kwargs)
    model.model_args = dict(kwargs)
    return model


def _check_name(name: str) -> None:
    if name not in _BACKBONES:
        close = difflib.get_close_matches(name, list(_BACKBONES), n=4, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise OptionError(
            f"model.init_args.backbone: unknown backbone {name!r}; {hint}"
            "`python -c 'import lightning_vit; print(lightning_vit.list_backbones())'` lists them"
        )
