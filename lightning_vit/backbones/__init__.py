"""Backbones: the registry and the four families (importing this package registers every variant)."""

from lightning_vit.backbones import coat, patchconvnet, scalable_vit, swin
from lightning_vit.backbones._registry import backbone_family, create_backbone, list_backbones, register_backbone

__all__ = [
    "backbone_family",
    "coat",
    "patchconvnet",
    "scalable_vit",
    "swin",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
