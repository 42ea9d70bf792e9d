"""Errors caused by a user's options; the CLI prints them as one line naming the key (exit status 2).

Errors of files on disk are :class:`lightning_vit.datamodules.DatasetError` (datasets) and
:class:`lightning_vit.backbones.pretrained.PretrainedError` (weights and checkpoints).
"""

from __future__ import annotations

__all__ = ["OptionError", "shorten"]


class OptionError(ValueError):
    """An option holds a value it does not accept; the message names the config key and what it accepts."""


def shorten(items: list, shown: int = 8) -> str:
    """The first ``shown`` of ``items`` and how many more, for a message."""
    return ", ".join(map(str, items[:shown])) + (f" and {len(items) - shown} more" if len(items) > shown else "")
