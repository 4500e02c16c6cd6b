"""STDC's detail head (mmseg's ``STDCHead``): an FCNHead on the stage-3 feature trained on a
boundary target that a Laplacian computes from the label map, with a sigmoid BCE + Dice loss
(mmseg's ``loss_decode=[CrossEntropyLoss(use_sigmoid=True), DiceLoss]``). Training only: as an
auxiliary head its logits never reach the prediction."""
from typing import Dict

import torch
import torch.nn.functional as F

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...config import register_config_keys
from .base import resize
from .fcn import FCNHead

__all__ = ["STDCHead", "boundary_targets", "dice_loss"]


@register_config_keys
def add_stdc_head_keys(keys):
    # mmseg configs/_base_/models/stdc.py, auxiliary_head[2]; the head's other settings are
    # those of the auxiliary-head node that names it (MODEL.AUX_HEAD_3 in stdc.yaml)
    keys.MODEL.STDC_HEAD = CN()
    keys.MODEL.STDC_HEAD.BOUNDARY_THRESHOLD = 0.1  # Laplacian response above it = boundary
    keys.MODEL.STDC_HEAD.NUM_CLASSES = 2  # detail logits: not boundary / boundary
    keys.MODEL.STDC_HEAD.DICE_LOSS_WEIGHT = 1.0  # the node's LOSS_WEIGHT weighs the BCE


def _binarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    return (x > threshold).to(x.dtype)


def boundary_targets(labels: torch.Tensor, laplacian: torch.Tensor, fusion: torch.Tensor,
                     threshold: float) -> torch.Tensor:
    """mmseg STDCHead's detail target from N x H x W labels (ignore values included, as mmseg
    computes it): the clamped Laplacian at strides 1, 2, 4 (the coarse ones nearest-upsampled),
    each thresholded, fused by the fixed 1x1 ``fusion`` weights (0.6, 0.3, 0.1) and thresholded
    again. N x H x W long in {0, 1}."""
    x = labels[:, None].to(laplacian.dtype)
    size = x.shape[2:]
    pyramid = []
    for stride in (1, 2, 4):
        t = F.conv2d(x, laplacian, stride=stride, padding=1).clamp(min=0)
        if stride > 1:
            t = F.interpolate(t, size=size, mode="nearest")
        pyramid.append(_binarize(t, threshold))
    fused = F.conv2d(torch.cat(pyramid, dim=1), fusion)
    return _binarize(fused, threshold)[:, 0].long()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_value: int = 255,
              smooth: float = 1.0, exponent: float = 2.0) -> torch.Tensor:
    """mmseg 0.30's ``DiceLoss`` (mean reduction): softmax probabilities against the one-hot
    target, per class ``1 - (2 sum(p t valid) + smooth) / (sum(p^e + t^e) + smooth)`` averaged
    over the batch, then over the classes (ignored pixels leave only the numerator)."""
    num_classes = logits.shape[1]
    prob = F.softmax(logits, dim=1).flatten(2)  # N x C x HW
    onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).flatten(1, 2)
    onehot = onehot.transpose(1, 2).to(prob.dtype)  # N x C x HW
    valid = (target != ignore_value).flatten(1)[:, None].to(prob.dtype)
    num = (prob * onehot * valid).sum(2) * 2 + smooth
    den = (prob.pow(exponent) + onehot.pow(exponent)).sum(2) + smooth
    return (1 - num / den).mean(0).mean()


@SEM_SEG_HEADS_REGISTRY.register()
class STDCHead(FCNHead):
    """FCNHead whose loss is the detail loss: ``{loss_name: BCE, loss_name + "_dice": Dice}``
    on :func:`boundary_targets` of the labels (no OHEM, no ignored pixels)."""

    @configurable
    def __init__(self, input_shape, *, boundary_threshold: float = 0.1,
                 dice_loss_weight: float = 1.0, **kwargs):
        super().__init__(input_shape, **kwargs)
        if not 0 <= boundary_threshold < 1:
            # mmseg's in-place thresholding turns every 1 back to 0 from a threshold of 1
            raise ValueError(f"MODEL.STDC_HEAD.BOUNDARY_THRESHOLD={boundary_threshold} must be in "
                             "[0, 1)")
        if self.num_classes != 2:
            raise ValueError(f"STDCHead: MODEL.STDC_HEAD.NUM_CLASSES={self.num_classes} must be 2"
                             " (boundary or not)")
        self.boundary_threshold = boundary_threshold
        self.dice_loss_weight = dice_loss_weight
        # mmseg's state_dict has both (laplacian_kernel a buffer, fusion_kernel a frozen
        # Parameter): persistent buffers here, so that its checkpoints load strictly
        self.register_buffer("laplacian_kernel", torch.tensor(
            [-1, -1, -1, -1, 8, -1, -1, -1, -1], dtype=torch.float32).reshape(1, 1, 3, 3))
        self.register_buffer("fusion_kernel", torch.tensor(
            [6. / 10, 3. / 10, 1. / 10], dtype=torch.float32).reshape(1, 3, 1, 1))

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        node = cfg.MODEL.STDC_HEAD
        ret.update(num_classes=node.NUM_CLASSES, boundary_threshold=node.BOUNDARY_THRESHOLD,
                   dice_loss_weight=node.DICE_LOSS_WEIGHT)
        return ret

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        # float32 even under AMP: label values up to 255 x 8 lose the Laplacian's sign in bf16
        with torch.no_grad(), torch.autocast(targets.device.type, enabled=False):
            target = boundary_targets(targets, self.laplacian_kernel, self.fusion_kernel,
                                      self.boundary_threshold)
        logits = resize(logits, targets.shape[-2:], self.align_corners)
        return {
            self.loss_name: self.loss_on(logits, target),
            f"{self.loss_name}_dice": dice_loss(logits, target, self.ignore_value)
            * self.dice_loss_weight,
        }
