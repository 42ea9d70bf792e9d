"""Object detection and instance segmentation: torchvision's RetinaNet and Mask R-CNN over a registered backbone + FPN.

The detectors' anchors, matchers, losses, NMS and RoIAlign are torchvision's; this module supplies the backbone
(any ``features_only`` backbone, with ViTDet's simple pyramid when it gives one stride-16 map), the FPN, a
transform that only pads and batches (the DataModule resizes and normalises), the label offset of Mask R-CNN, the
rescaling of predictions to the original images, and COCO evaluation with torchmetrics.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from lightning_vit.backbones import create_backbone
from lightning_vit.errors import OptionError
from lightning_vit.necks.simple_pyramid import SimplePyramid
from lightning_vit.tasks.base import BaseTask

__all__ = ["BackboneWithFPN", "COCOMeanAveragePrecision", "ObjectDetector", "DETECTORS", "METRIC_KEYS"]

DETECTORS = ("retinanet", "mask_rcnn")
METRIC_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


class BackboneWithFPN(nn.Module):
    """A ``features_only`` backbone (plus a simple pyramid if it gives one map) followed by torchvision's FPN.

    Args:
        body: the backbone; ``forward`` returns NCHW maps matching ``body.feature_info``.
        detector: ``retinanet`` (FPN over strides 8-32 giving P3-P5, plus P6/P7 from C5 by stride-2 convs as
            mmdet's ``add_extra_convs='on_input'``; torchvision takes P5 instead when C5 has ``out_channels``
            channels) or ``mask_rcnn`` (FPN over strides 4-32 giving P2-P5, plus P6 by max-pooling P5).
        out_channels: FPN channels.

    Attributes:
        out_channels: channels of every output map (what torchvision's detectors read).
    """

    def __init__(self, body: nn.Module, detector: str, out_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        info = list(body.feature_info)
        if len(info) == 1:  # a columnar backbone (PatchConvNet): one stride-16 map
            self.pyramid = SimplePyramid(info[0]["num_chs"])
            info = self.pyramid.feature_info
        else:
            self.pyramid = None
        reductions = [f["reduction"] for f in info]
        first = 8 if detector == "retinanet" else 4
        if first not in reductions or reductions[-1] != 32:
            raise ValueError(f"the backbone's feature_info must reach strides {first}..32, got reductions {reductions}")
        self.levels = list(range(reductions.index(first), len(info)))
        in_channels = [info[i]["num_chs"] for i in self.levels]
        extra = LastLevelP6P7(in_channels[-1], out_channels) if detector == "retinanet" else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        if self.pyramid is not None:
            features = self.pyramid(features)
        return self.fpn(OrderedDict((str(i), features[level]) for i, level in enumerate(self.levels)))


class _PadOnlyTransform(GeneralizedRCNNTransform):
    """torchvision's detector transform without its resize and normalisation: pad to ``size_divisible`` and batch.

    Its postprocess is a no-op too: boxes stay in the input image's frame and Mask R-CNN's masks stay (N, 1, 28, 28)
    so the task pastes them straight into the original image.
    """

    def __init__(self, size_divisible: int = 32) -> None:
        super().__init__(1, 1, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], size_divisible=size_divisible)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple[torch.Tensor, dict | None]:
        return image, target

    def postprocess(self, result: list[dict], image_shapes: list, original_image_sizes: list) -> list[dict]:
        return result


class COCOMeanAveragePrecision(MeanAveragePrecision):
    """torchmetrics' COCO mAP (pycocotools backend) that counts each image once under DDP.

    Every ``target`` carries its ``image_id``. Under several processes the per-image states are gathered with
    ``all_gather_object`` (ranks may hold different numbers of images) and an image seen twice (the padding of a
    ``DistributedSampler``) is kept once, so the result equals COCOeval over the validation json.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(backend="pycocotools", **kwargs)
        self.add_state("image_ids", default=[], dist_reduce_fx=None)

    def update(self, preds: list[dict], target: list[dict]) -> None:
        super().update(preds, target)
        self.image_ids.extend(int(t["image_id"]) for t in target)

    def _sync_dist(self, dist_sync_fn=None, process_group=None) -> None:
        names = [n for n in self._defaults if isinstance(getattr(self, n), list)]
        local = {n: [v.cpu() if torch.is_tensor(v) else v for v in getattr(self, n)] for n in names}
        gathered = [None] * dist.get_world_size(group=process_group or self.process_group)
        dist.all_gather_object(gathered, local, group=process_group or self.process_group)
        merged = {n: [v for rank in gathered for v in rank[n]] for n in names}
        keep, seen = [], set()
        for i, image_id in enumerate(merged["image_ids"]):
            if image_id not in seen:
                seen.add(image_id)
                keep.append(i)
        for n in names:
            values = merged[n]
            if len(values) == len(merged["image_ids"]):
                values = [values[i] for i in keep]
            setattr(self, n, [v.to(self.device) if torch.is_tensor(v) else v for v in values])


class ObjectDetector(BaseTask):
    """RetinaNet or Mask R-CNN (torchvision) over a registered backbone and an FPN.

    Batches are those of :class:`~lightning_vit.datamodules.coco.COCODataModule`: ``image`` a list of normalised
    (3, H, W) tensors (the detector only pads them to a multiple of 32), ``target`` a list of dicts ``boxes``
    (N, 4) xyxy pixels, ``labels`` (N,) in ``0..K-1`` (Mask R-CNN's background class 0 is handled here by
    shifting them to ``1..K``), ``masks`` (N, H, W) uint8 for Mask R-CNN, and ``orig_size`` (B, 2) with the
    (height, width) of each original image.

    Predictions (``predict_step``, and what the metrics see) are per-image dicts in the ORIGINAL image's
    coordinates: ``boxes`` (N, 4) xyxy, ``scores``, ``labels`` in ``0..K-1``, for Mask R-CNN ``masks`` (N, H0, W0)
    bool, plus ``image_id`` and ``path``. ``category_ids`` maps labels back to the source json's category ids.

    Validation logs COCO box AP as ``val_map``, ``val_map_50``, ``val_map_75``, ``val_map_small``,
    ``val_map_medium``, ``val_map_large``, ``val_mar_1``, ``val_mar_10``, ``val_mar_100`` and, for Mask R-CNN, the
    mask AP under the same names with ``segm_`` (``val_segm_map``, ``val_segm_map_50``, ...); ``test_`` likewise.

    Args:
        backbone: registered backbone name, e.g. ``swin_tiny_patch4_window7_224``.
        backbone_kwargs: constructor arguments of the backbone (``drop_path_rate``, ...).
        pretrained: checkpoint file or URL for the backbone (e.g. ImageNet weights).
        detector: ``retinanet`` or ``mask_rcnn``.
        num_classes: object classes K (no background); ``None`` takes ``len(class_names)``.
        class_names: class names in label order (the CLI fills them from the DataModule).
        category_ids: the source json's category id of each label; ``None`` takes the DataModule's
            ``category_ids`` when training, else ``1..K``. Stored in the checkpoint.
        fpn_channels: FPN channels.
        score_thresh: detections below this score are dropped before NMS.
        detections_per_img: detections kept per image (COCO evaluates 100).
        mask_head_channels: width of Mask R-CNN's four-conv mask head (256 in torchvision and mmdet).
        box_head_dim: width of Mask R-CNN's two-layer box head (1024 in torchvision and mmdet).
        detector_kwargs: further arguments of torchvision's ``RetinaNet`` / ``MaskRCNN`` (e.g. the demo's smaller
            ``rpn_post_nms_top_n_test`` and ``box_batch_size_per_image`` for CPU).
        **kwargs: optimizer and schedule options of :class:`~lightning_vit.tasks.base.BaseTask`.
    """

    prediction_format = "detection"

    def __init__(
        self,
        backbone: str = "coat_lite_small",
        backbone_kwargs: dict | None = None,
        pretrained: str | None = None,
        detector: str = "mask_rcnn",
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        fpn_channels: int = 256,
        score_thresh: float = 0.05,
        detections_per_img: int = 100,
        mask_head_channels: int = 256,
        box_head_dim: int = 1024,
        detector_kwargs: dict | None = None,
        **kwargs,
    ) -> None:
        if detector not in DETECTORS:
            raise OptionError(f"model.init_args.detector must be one of {DETECTORS}, got {detector!r}")
        super().__init__(**kwargs)
        self._set_classes(num_classes, class_names)
        self._set_category_ids(category_ids)
        self.with_masks = detector == "mask_rcnn"
        self.configure_models()
        self.configure_metrics()

    def _set_category_ids(self, category_ids: list[int] | None) -> None:
        if category_ids is not None and len(category_ids) != self.num_classes:
            raise OptionError(
                f"model.init_args.category_ids has {len(category_ids)} ids for {self.num_classes} classes"
            )
        self.category_ids = list(category_ids) if category_ids is not None else list(range(1, self.num_classes + 1))

    def configure_models(self) -> None:
        hp = self.hparams
        body = create_backbone(hp.backbone, pretrained=hp.pretrained, features_only=True, **(hp.backbone_kwargs or {}))
        neck = BackboneWithFPN(body, hp.detector, hp.fpn_channels)
        if hp.detector == "retinanet":
            self.detector = RetinaNet(
                neck,
                self.num_classes,
                score_thresh=hp.score_thresh,
                detections_per_img=hp.detections_per_img,
                **(hp.detector_kwargs or {}),
            )
        else:
            self.detector = MaskRCNN(
                neck,
                None,  # the class count is in the predictors: K + background
                box_score_thresh=hp.score_thresh,
                box_detections_per_img=hp.detections_per_img,
                box_head=TwoMLPHead(neck.out_channels * 7 * 7, hp.box_head_dim),
                box_predictor=FastRCNNPredictor(hp.box_head_dim, self.num_classes + 1),
                mask_head=MaskRCNNHeads(neck.out_channels, [hp.mask_head_channels] * 4, 1),
                mask_predictor=MaskRCNNPredictor(hp.mask_head_channels, hp.mask_head_channels, self.num_classes + 1),
                **(hp.detector_kwargs or {}),
            )
        self.detector.transform = _PadOnlyTransform(size_divisible=32)

    @property
    def backbone(self) -> nn.Module:
        """The registered backbone inside the detector."""
        return self.detector.backbone.body

    def no_weight_decay(self) -> set[str]:
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"detector.backbone.body.{n}" for n in names}

    def configure_metrics(self) -> None:
        self.val_box_map = COCOMeanAveragePrecision(iou_type="bbox")
        self.test_box_map = COCOMeanAveragePrecision(iou_type="bbox")
        if self.with_masks:
            self.val_segm_map = COCOMeanAveragePrecision(iou_type="segm")
            self.test_segm_map = COCOMeanAveragePrecision(iou_type="segm")

    def setup(self, stage: str) -> None:
        """Take ``category_ids`` from the DataModule when the config left them unset (so they reach the checkpoint)."""
        ids = getattr(self.trainer.datamodule, "category_ids", None) if stage == "fit" else None
        if self.hparams.category_ids is None and ids is not None:
            self._set_category_ids(list(ids))
            self.hparams.category_ids = self.category_ids

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        """Losses (dict) in training mode with ``targets``, raw detections in the input frame in eval mode."""
        return self.detector(images, targets)

    @staticmethod
    def _masks(target: dict) -> torch.Tensor:
        if "masks" not in target:
            raise OptionError("Mask R-CNN needs instance masks: set data.init_args.with_masks=true")
        return target["masks"]

    def _training_targets(self, targets: list[dict]) -> list[dict]:
        """Boxes, labels (shifted past Mask R-CNN's background) and masks, as torchvision's detectors take them."""
        out = []
        for t in targets:
            target = {"boxes": t["boxes"], "labels": t["labels"] + 1 if self.with_masks else t["labels"]}
            if self.with_masks:
                target["masks"] = self._masks(t)
            out.append(target)
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self(batch["image"], self._training_targets(batch["target"]))
        loss = sum(losses.values())
        n = len(batch["image"])
        self.log("train_loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train_{k}": v for k, v in losses.items()}, batch_size=n)
        return loss

    @torch.no_grad()
    def predict_batch(self, batch: dict) -> list[dict]:
        """Detections for a batch, in the coordinates of each original image (see the class docstring)."""
        outputs = self(batch["image"])
        predictions = []
        for image, output, (h0, w0) in zip(batch["image"], outputs, batch["orig_size"].tolist()):
            h, w = image.shape[-2:]
            scale = torch.tensor([w0 / w, h0 / h, w0 / w, h0 / h], device=output["boxes"].device)
            boxes = output["boxes"].float() * scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w0)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h0)
            labels = output["labels"] - 1 if self.with_masks else output["labels"]
            pred = {"boxes": boxes, "scores": output["scores"].float(), "labels": labels}
            if self.with_masks:
                masks = paste_masks_in_image(output["masks"].float(), boxes, (h0, w0))
                pred["masks"] = masks[:, 0] > 0.5
            predictions.append(pred)
        return predictions

    def _metric_targets(self, batch: dict) -> list[dict]:
        targets = []
        for t in batch["target"]:
            target = {k: t[k] for k in ("boxes", "labels", "iscrowd", "area", "image_id") if k in t}
            if self.with_masks:
                target["masks"] = self._masks(t).bool()
            targets.append(target)
        return targets

    def _evaluate(self, batch: dict, stage: str) -> None:
        predictions = self.predict_batch(batch)
        targets = self._metric_targets(batch)
        getattr(self, f"{stage}_box_map").update(
            [{k: p[k] for k in ("boxes", "scores", "labels")} for p in predictions], targets
        )
        if self.with_masks:
            getattr(self, f"{stage}_segm_map").update(
                [{k: p[k] for k in ("masks", "scores", "labels")} for p in predictions], targets
            )

    def _log_maps(self, stage: str) -> None:
        pairs = [("", getattr(self, f"{stage}_box_map"))]
        if self.with_masks:
            pairs.append(("segm_", getattr(self, f"{stage}_segm_map")))
        for prefix, metric in pairs:
            if not metric.update_called:
                continue
            result = metric.compute()
            self.log_dict({f"{stage}_{prefix}{k}": result[k].float() for k in METRIC_KEYS}, prog_bar=not prefix)
            metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_maps("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_maps("test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        predictions = self.predict_batch(batch)
        names = batch.get("file_name") or [Path(p).name for p in batch["path"]]
        for pred, image_id, path, name in zip(predictions, batch["image_id"].tolist(), batch["path"], names):
            pred["image_id"], pred["path"], pred["file_name"] = image_id, path, name
        return predictions
