"""Backbones: the registry and the four families (importing this package registers every variant)."""

from lightning_vit.backbones import coat, patchconvnet, swin
from lightning_vit.backbones._registry import backbone_family, create_backbone, list_backbones, register_backbone

__all__ = ["backbone_family", "coat", "patchconvnet", "swin", "create_backbone", "list_backbones", "register_backbone"]
