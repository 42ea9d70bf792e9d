"""Task heads: segmentation decoders (UperNet, Semantic FPN, FCN auxiliary)."""

from lightning_vit.heads.segmentation import FCNHead, SemanticFPNHead, UperNetHead

__all__ = ["FCNHead", "SemanticFPNHead", "UperNetHead"]
