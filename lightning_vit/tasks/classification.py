"""Image classification: a registered backbone with its own classifier, trained with the papers' recipe."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_vit.backbones import create_backbone
from lightning_vit.tasks.base import BaseTask

__all__ = ["ImageClassifier"]


class ImageClassifier(BaseTask):
    """Classify images with a backbone's own head.

    Batches are dicts ``image`` (B, 3, H, W), ``label`` (B,) and, in training with mixup or label smoothing,
    ``soft_label`` (B, num_classes), which the loss then uses. ``predict_step`` returns class probabilities.

    Args:
        backbone: registered backbone name, e.g. ``coat_lite_tiny``.
        backbone_kwargs: constructor arguments of the backbone (``drop_path_rate``, ...).
        pretrained: checkpoint file or URL to initialise the backbone from (classifier re-initialised when
            the number of classes differs).
        num_classes: classifier outputs; ``None`` takes ``len(class_names)``.
        class_names: label names, stored in the checkpoint (the CLI fills them from the DataModule).
        **kwargs: optimizer and schedule options of :class:`~lightning_vit.tasks.base.BaseTask`.
    """

    prediction_format = "classification"
    #: set by ``PredictionWriter(save_attention=True)``: ``predict_step`` also returns the backbone's attention maps
    predict_attention = False

    def __init__(
        self,
        backbone: str = "coat_lite_tiny",
        backbone_kwargs: dict | None = None,
        pretrained: str | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self._set_classes(num_classes, class_names)
        self.configure_models()
        self.configure_metrics()

    def configure_models(self) -> None:
        hp = self.hparams
        self.backbone = create_backbone(
            hp.backbone, pretrained=hp.pretrained, num_classes=self.num_classes, **(hp.backbone_kwargs or {})
        )

    def configure_metrics(self) -> None:
        metrics = MetricCollection(
            {
                "acc1": MulticlassAccuracy(self.num_classes, top_k=1, average="micro"),
                "acc5": MulticlassAccuracy(self.num_classes, top_k=min(5, self.num_classes), average="micro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        target = batch.get("soft_label")
        if target is not None:
            loss = torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits.float(), batch["label"])
        self.train_metrics.update(logits, batch["label"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(logits))
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=len(logits))
        return loss

    def _evaluate(self, batch: dict, metrics: MetricCollection, prefix: str) -> None:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits.float(), batch["label"])
        metrics.update(logits, batch["label"])
        self.log_eval_loss(f"{prefix}loss", loss, len(logits))
        self.log_dict(metrics, prog_bar=True, batch_size=len(logits))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val_")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test_")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out = {"probs": self(batch["image"]).float().softmax(dim=-1), "path": batch["path"]}
        if self.predict_attention:
            if not hasattr(self.backbone, "forward_attention"):
                raise ValueError(f"prediction_writer.save_attention: {self.hparams.backbone} has no attention maps")
            out["attention"] = self.backbone.forward_attention(batch["image"]).float()  # (B, [K,] h, w)
        return out
