"""Necks: turn a backbone's maps into the multi-scale pyramid a dense head expects."""

from lightning_vit.necks.fpn import FPN
from lightning_vit.necks.simple_pyramid import SimplePyramid

__all__ = ["FPN", "SimplePyramid"]
