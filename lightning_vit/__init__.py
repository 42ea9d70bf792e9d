"""lightning_vit: train, fine-tune, evaluate and deploy vision-transformer backbones with PyTorch Lightning."""

from lightning_vit.backbones import create_backbone, list_backbones

__version__ = "0.1.0"
__all__ = ["create_backbone", "list_backbones", "__version__"]
