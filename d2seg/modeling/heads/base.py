"""What every decode head shares (mmseg's ``BaseDecodeHead``): input selection and transform,
dropout, the 1x1 classifier ``conv_seg`` and the loss. A method's head only implements
:meth:`BaseDecodeHead.layers`."""
from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.events import get_event_storage

from ...export.tracing import is_exporting
from ..layers.norm import norm_with
from ..losses import cross_entropy, ohem_pixel_weight, pixel_accuracy

__all__ = ["BaseDecodeHead", "head_config_node", "resize"]

INPUT_TRANSFORMS = ("", "resize_concat", "multiple_select")


def resize(x: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """Bilinear resize; a no-op when ``x`` already has ``size`` (as F.interpolate would be).
    While exporting, the size test would be frozen into the graph for the example's size, so
    the graph always interpolates (a same-size bilinear resize is exactly the identity)."""
    if not is_exporting() and tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def head_config_node(cfg: CfgNode, head_cfg: Optional[CfgNode]) -> CfgNode:
    """The head node a head is built from: ``head_cfg`` or, by default, MODEL.SEM_SEG_HEAD."""
    return cfg.MODEL.SEM_SEG_HEAD if head_cfg is None else head_cfg


class BaseDecodeHead(nn.Module):
    """Base of all decode heads.

    ``forward(features, targets)`` returns ``(logits, losses)``: logits at the head's output stride
    and, when ``targets`` (N x H x W long, ``ignore_value`` = ignore) are given, a dict
    ``{loss_name: loss}``. Subclasses implement ``layers(x) -> features before the classifier``,
    where ``x`` is one tensor (single input / resize_concat) or a list (multiple_select).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: List[str],
        num_classes: int,
        channels: int,
        input_transform: str = "",
        norm: str = "SyncBN",
        norm_eps: float = 0.0,
        norm_momentum: float = 0.0,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        class_weight: Optional[List[float]] = None,
        avg_non_ignore: bool = False,
        use_sigmoid: bool = False,
        ohem_min_kept: int = 0,
        ohem_thresh: Optional[float] = None,
        loss_name: str = "loss_sem_seg",
    ):
        super().__init__()
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(
                f"INPUT_TRANSFORM={input_transform!r} is not one of {INPUT_TRANSFORMS}"
            )
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: IN_FEATURES {missing} are not produced by the backbone, "
                f"which outputs {sorted(input_shape)}"
            )
        if not input_transform and len(in_features) != 1:
            raise ValueError(
                f"{type(self).__name__}: IN_FEATURES={in_features} needs INPUT_TRANSFORM "
                "'resize_concat' or 'multiple_select' when it names more than one feature"
            )
        if class_weight and len(class_weight) != num_classes:
            raise ValueError(
                f"CLASS_WEIGHT has {len(class_weight)} values but NUM_CLASSES={num_classes}"
            )
        self.in_features = list(in_features)
        self.input_transform = input_transform
        in_channels = [input_shape[f].channels for f in in_features]
        if input_transform == "resize_concat":
            self.in_channels: Union[int, List[int]] = sum(in_channels)
        elif input_transform == "multiple_select":
            self.in_channels = in_channels
        else:
            self.in_channels = in_channels[0]
        # Stride of the logits: that of the first (finest, for resize_concat) selected feature.
        self.common_stride = input_shape[in_features[0]].stride
        self.num_classes = num_classes
        self.channels = channels
        self.norm = norm_with(norm, norm_eps, norm_momentum)  # a factory with eps/momentum
        self.align_corners = align_corners
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.avg_non_ignore = avg_non_ignore
        if use_sigmoid and class_weight:
            # mmseg 0.30 passes them as BCE's pos_weight, which broadcasts over the width
            raise ValueError("LOSS_USE_SIGMOID does not take CLASS_WEIGHT (mmseg 0.30 applies "
                             "them along the image width)")
        self.use_sigmoid = use_sigmoid
        self.ohem_min_kept = ohem_min_kept  # mmseg's OHEMPixelSampler (0 = none)
        self.ohem_thresh = ohem_thresh
        self.loss_name = loss_name
        self.register_buffer(
            "class_weight",
            torch.tensor(class_weight, dtype=torch.float32) if class_weight else None,
            persistent=False,
        )
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        node = head_config_node(cfg, head_cfg)
        return {
            "input_shape": input_shape,
            "in_features": list(node.IN_FEATURES),
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "channels": node.CONVS_DIM,
            "input_transform": node.INPUT_TRANSFORM,
            "norm": node.NORM,
            "norm_eps": node.NORM_EPS,
            "norm_momentum": node.NORM_MOMENTUM,
            "dropout_ratio": node.DROPOUT,
            "align_corners": node.ALIGN_CORNERS,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": node.LOSS_WEIGHT,
            "class_weight": list(node.CLASS_WEIGHT) or None,
            "avg_non_ignore": node.LOSS_AVG_NON_IGNORE,
            "use_sigmoid": node.LOSS_USE_SIGMOID,
            "ohem_min_kept": node.OHEM_MIN_KEPT,
            "ohem_thresh": node.OHEM_THRESH,
            "loss_name": loss_name,
        }

    # ---- shared parts ------------------------------------------------------------------------
    def transform_inputs(self, features: Dict[str, torch.Tensor]):
        inputs = [features[f] for f in self.in_features]
        if self.input_transform == "resize_concat":
            size = inputs[0].shape[2:]
            return torch.cat([resize(x, size, self.align_corners) for x in inputs], dim=1)
        if self.input_transform == "multiple_select":
            return inputs
        return inputs[0]

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def layers(self, x):
        raise NotImplementedError

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        logits = self.cls_seg(self.layers(self.transform_inputs(features)))
        losses = self.losses(logits, targets) if targets is not None else {}
        return logits, losses

    def loss_on(self, logits: torch.Tensor, targets: torch.Tensor,
                log_accuracy: bool = True) -> torch.Tensor:
        """The weighted loss of ``logits`` (resized to the label size as mmseg does); extra
        outputs of a head (DANet's PAM/CAM) pass ``log_accuracy=False``."""
        logits = resize(logits, targets.shape[-2:], self.align_corners)
        weight = None
        if self.ohem_min_kept > 0:  # mmseg samples on the resized logits, before the loss
            weight = ohem_pixel_weight(
                logits, targets, min_kept=self.ohem_min_kept, thresh=self.ohem_thresh,
                ignore_value=self.ignore_value, class_weight=self.class_weight,
            )
        loss = cross_entropy(
            logits,
            targets,
            ignore_value=self.ignore_value,
            class_weight=self.class_weight,
            avg_non_ignore=self.avg_non_ignore,
            weight=weight,
            use_sigmoid=self.use_sigmoid,
        )
        if log_accuracy and self.loss_name == "loss_sem_seg":
            _log_accuracy(logits, targets, self.ignore_value)
        return loss * self.loss_weight

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {self.loss_name: self.loss_on(logits, targets)}


def _log_accuracy(logits, targets, ignore_value):
    """mmseg logs ``acc_seg`` with the loss; put it in Detectron2's event storage when training."""
    try:
        storage = get_event_storage()
    except AssertionError:  # no trainer running (tests, scripts)
        return
    storage.put_scalar("acc_seg", pixel_accuracy(logits, targets, ignore_value).item())
