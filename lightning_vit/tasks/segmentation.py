"""Semantic segmentation: a features-only backbone, an optional neck and UperNet or Semantic FPN, as in mmseg."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import Metric

from lightning_vit.backbones import create_backbone
from lightning_vit.errors import OptionError
from lightning_vit.heads.segmentation import FCNHead, SemanticFPNHead, UperNetHead
from lightning_vit.necks.fpn import FPN
from lightning_vit.necks.simple_pyramid import SimplePyramid
from lightning_vit.tasks.base import BaseTask

__all__ = ["SegmentationMetrics", "SemanticSegmenter", "slide_inference"]

HEADS = ("upernet", "fpn")
INFERENCE = ("whole", "slide")


class SegmentationMetrics(Metric):
    """mIoU, mAcc and aAcc from a confusion matrix accumulated over the whole evaluation set (mmseg's rule).

    Per class c with intersection I_c (pixels of label c predicted c), label area T_c and predicted area P_c (over
    pixels whose label is not ``ignore_index``): IoU_c = I_c / (T_c + P_c - I_c) and Acc_c = I_c / T_c.
    A class whose denominator is 0 is NaN and left out of the mean: for IoU, a class absent from both the labels and
    the predictions; for Acc, a class absent from the labels. aAcc = sum(I) / sum(T). Values are fractions (0-1).
    The state is summed across processes, so the result under DDP is that of the whole set.

    Args:
        num_classes: number of classes; labels must be in ``[0, num_classes)`` or ``ignore_index``.
        ignore_index: label value excluded from the counts.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Count pixels.

        Args:
            preds: class indices (B, H, W) or logits (B, C, H, W).
            target: labels (B, H, W).
        """
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(dim=1)
        if preds.shape != target.shape:
            raise ValueError(f"predictions {tuple(preds.shape)} and labels {tuple(target.shape)} differ in shape")
        valid = target != self.ignore_index
        t, p = target[valid].long(), preds[valid].long()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(
                f"labels must be in [0, {self.num_classes}) or {self.ignore_index}, got values {t.min()}..{t.max()}"
            )
        c = self.num_classes
        self.confmat += torch.bincount(t * c + p, minlength=c * c).view(c, c)

    def per_class(self) -> dict[str, torch.Tensor]:
        """Per-class ``IoU`` and ``Acc`` (NaN where undefined) from the current (local) counts."""
        confmat = self.confmat.double()
        intersect = confmat.diag()
        label_area, pred_area = confmat.sum(dim=1), confmat.sum(dim=0)
        return {"IoU": intersect / (label_area + pred_area - intersect), "Acc": intersect / label_area}

    def compute(self) -> dict[str, torch.Tensor]:
        scores = self.per_class()
        confmat = self.confmat.double()
        return {
            "mIoU": scores["IoU"].nanmean().float(),
            "mAcc": scores["Acc"].nanmean().float(),
            "aAcc": (confmat.diag().sum() / confmat.sum()).float(),
        }


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def slide_inference(
    model: nn.Module, image: torch.Tensor, num_classes: int, crop: int | Sequence[int], stride: int | Sequence[int]
) -> torch.Tensor:
    """Logits (B, num_classes, H, W) averaged over overlapping windows (mmseg's ``slide_inference``).

    Windows of ``crop`` (h, w) start every ``stride`` pixels; the last row and column are shifted back so they end
    at the border, and a window larger than the image is clipped to it. ``model`` returns logits at its input size.
    """
    (ch, cw), (sh, sw) = _pair(crop), _pair(stride)
    b, _, h, w = image.shape
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    logits = image.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = image.new_zeros((1, 1, h, w), dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            logits[:, :, y1:y2, x1:x2] += model(image[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count


class SemanticSegmenter(BaseTask):
    """Segment images with a backbone and a UperNet or Semantic FPN head (mmseg's recipes).

    The backbone is built ``features_only``; if it gives a single (stride-16) map, a
    :class:`~lightning_vit.necks.simple_pyramid.SimplePyramid` turns it into strides 4/8/16/32. Batches are dicts
    ``image`` (B, 3, H, W) and ``mask`` (B, H, W) long with ``ignore_index`` on unlabelled and padded pixels; the
    logits are upsampled (bilinear) to the mask's size. Validation logs ``val_mIoU``, ``val_mAcc``, ``val_aAcc``
    (fractions, over the whole set). ``predict_step`` returns per image the class-index map at the original image
    size (``size`` in the batch) and its path.

    Args:
        backbone: registered backbone name, e.g. ``swin_tiny_patch4_window7_224``.
        backbone_kwargs: constructor arguments of the backbone (``drop_path_rate``, ...).
        pretrained: checkpoint file or URL for the backbone (ImageNet weights; the classifier is dropped).
        num_classes: output classes; ``None`` takes ``len(class_names)``.
        class_names: label names, stored in the checkpoint (the CLI fills them from the DataModule).
        head: ``upernet`` (UperNet + auxiliary FCN head on the stride-16 map) or ``fpn`` (FPN neck + Semantic FPN
            head).
        head_channels: width of the decode head; ``None`` gives 512 for UperNet, 128 for Semantic FPN.
        fpn_channels: FPN neck width (``head: fpn``).
        aux_channels: width of UperNet's auxiliary FCN head.
        aux_weight: weight of the auxiliary loss (0 removes the auxiliary head).
        dropout: Dropout2d before the classifiers.
        ignore_index: label value excluded from the loss and the metrics.
        loss_avg_non_ignore: average the cross-entropy over labelled pixels only (PyTorch's rule); the default
            averages over all pixels, ignored ones counting 0 (mmseg's default, used by the papers).
        inference: ``whole`` (the image at once) or ``slide`` (windows of ``slide_crop`` every ``slide_stride``).
        slide_crop: window size (h, w) or one int.
        slide_stride: window step (h, w) or one int.
        **kwargs: optimizer and schedule options of :class:`~lightning_vit.tasks.base.BaseTask`.
    """

    prediction_format = "segmentation"

    def __init__(
        self,
        backbone: str = "swin_tiny_patch4_window7_224",
        backbone_kwargs: dict | None = None,
        pretrained: str | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        head: str = "upernet",
        head_channels: int | None = None,
        fpn_channels: int = 256,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        dropout: float = 0.1,
        ignore_index: int = 255,
        loss_avg_non_ignore: bool = False,
        inference: str = "whole",
        slide_crop: int | tuple[int, int] = 512,
        slide_stride: int | tuple[int, int] = 341,
        **kwargs,
    ) -> None:
        if head not in HEADS:
            raise OptionError(f"model.init_args.head must be one of {HEADS}, got {head!r}")
        if inference not in INFERENCE:
            raise OptionError(f"model.init_args.inference must be one of {INFERENCE}, got {inference!r}")
        super().__init__(**kwargs)
        self._set_classes(num_classes, class_names)
        self.configure_models()
        self.configure_metrics()

    def configure_models(self) -> None:
        hp = self.hparams
        self.backbone = create_backbone(
            hp.backbone, pretrained=hp.pretrained, features_only=True, **(hp.backbone_kwargs or {})
        )
        info = self.backbone.feature_info
        self.pyramid = None
        if len(info) == 1:  # a columnar backbone (PatchConvNet): one stride-16 map -> strides 4/8/16/32
            self.pyramid = SimplePyramid(info[0]["num_chs"])
            info = self.pyramid.feature_info
        channels = [i["num_chs"] for i in info]
        strides = [i["reduction"] for i in info]
        self.neck, self.aux_head = None, None
        if hp.head == "upernet":
            self.decode_head = UperNetHead(
                channels, self.num_classes, channels=hp.head_channels or 512, dropout=hp.dropout
            )
            if hp.aux_weight > 0:
                self.aux_index = strides.index(16) if 16 in strides else len(strides) - 2
                self.aux_head = FCNHead(channels[self.aux_index], self.num_classes, hp.aux_channels, dropout=hp.dropout)
        else:
            self.neck = FPN(channels, hp.fpn_channels, strides=strides)
            self.decode_head = SemanticFPNHead(
                [hp.fpn_channels] * len(strides), strides, self.num_classes, hp.head_channels or 128, hp.dropout
            )

    def configure_metrics(self) -> None:
        self.val_metrics = SegmentationMetrics(self.num_classes, self.hparams.ignore_index)
        self.test_metrics = self.val_metrics.clone()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone (and simple pyramid) maps at strides 4, 8, 16, 32."""
        feats = self.backbone(x)
        return self.pyramid(feats) if self.pyramid is not None else list(feats)

    def _decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.decode_head(self.neck(feats) if self.neck is not None else feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) at the input's size."""
        return F.interpolate(self._decode(self.features(x)), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def _loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = F.interpolate(logits.float(), size=mask.shape[-2:], mode="bilinear", align_corners=False)
        if self.hparams.loss_avg_non_ignore:
            return F.cross_entropy(logits, mask, ignore_index=self.hparams.ignore_index)
        return F.cross_entropy(logits, mask, ignore_index=self.hparams.ignore_index, reduction="none").mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        feats = self.features(image)
        loss = decode_loss = self._loss(self._decode(feats), mask)
        if self.aux_head is not None:
            aux_loss = self._loss(self.aux_head(feats[self.aux_index]), mask)
            loss = loss + self.hparams.aux_weight * aux_loss
            self.log("train_aux_loss", aux_loss, batch_size=len(image))
        self.log("train_decode_loss", decode_loss, batch_size=len(image))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(image))
        return loss

    def inference_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W) at the image size, by whole-image or sliding-window inference."""
        hp = self.hparams
        if hp.inference == "slide":
            return slide_inference(self, image, self.num_classes, hp.slide_crop, hp.slide_stride)
        return self(image).float()

    def _evaluate(self, batch: dict, metrics: SegmentationMetrics, prefix: str) -> None:
        """mmseg's protocol: each image's logits, cropped to its valid (unpadded) part, are resized (bilinear) to its
        label map's size, where the loss and the metrics are computed. A batch without ``valid_size`` / ``size``
        has its masks at the images' size."""
        masks = batch["mask"]
        logits = self.inference_logits(batch["image"])
        count = len(masks)
        valid = batch.get("valid_size", torch.tensor([logits.shape[-2:]] * count)).tolist()
        sizes = batch.get("size", torch.tensor([masks.shape[-2:]] * count)).tolist()
        losses = []
        for i, ((vh, vw), (h, w)) in enumerate(zip(valid, sizes)):
            image_logits, mask = logits[i : i + 1, :, :vh, :vw], masks[i : i + 1, :h, :w]
            if image_logits.shape[-2:] != mask.shape[-2:]:
                image_logits = F.interpolate(image_logits, size=(h, w), mode="bilinear", align_corners=False)
            ignore = self.hparams.ignore_index
            losses.append(F.cross_entropy(image_logits, mask, ignore_index=ignore, reduction="none").mean())
            metrics.update(image_logits.argmax(dim=1), mask)
        self.log_eval_loss(f"{prefix}loss", torch.stack(losses).mean(), count)

    def _log_scores(self, metrics: SegmentationMetrics, prefix: str) -> None:
        scores = metrics.compute()  # synced across processes: every rank logs the same values
        self.log_dict({f"{prefix}{k}": v for k, v in scores.items()}, prog_bar=True)
        metrics.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val_")

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_metrics, "val_")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test_")

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_metrics, "test_")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Class maps at each image's original size.

        The batch holds ``image`` (B, 3, H, W) (resized images, zero-padded to a common size), ``valid_size``
        (B, 2) (each resized image's own h, w), ``size`` (B, 2) (the original h, w) and ``path``.

        Returns:
            ``mask``: list of (h_i, w_i) long tensors; ``path``: the image paths; ``file_name``: the paths relative
            to the predict root.
        """
        logits = self.inference_logits(batch["image"])
        masks = []
        for i, ((vh, vw), (h, w)) in enumerate(zip(batch["valid_size"].tolist(), batch["size"].tolist())):
            valid = logits[i : i + 1, :, :vh, :vw]
            masks.append(F.interpolate(valid, size=(h, w), mode="bilinear", align_corners=False)[0].argmax(dim=0))
        names = batch.get("file_name") or [Path(p).name for p in batch["path"]]
        return {"mask": masks, "path": list(batch["path"]), "file_name": list(names)}
