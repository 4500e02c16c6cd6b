"""ICNet's neck (mmseg's ``ICNeck``, mmseg/models/necks/ic_neck.py): two cascade feature fusion
units, ``cff_24`` (sub4 into sub2) and ``cff_12`` (its output into sub1). Outputs, in mmseg's
order: ``x_24`` (stride 16) and ``x_12`` (stride 8), the upsampled low-resolution branches the
auxiliary heads read (cascade label guidance), and ``cff_12`` (stride 8) for the decode head."""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec

from ...config import register_config_keys
from ..heads.base import resize
from ..layers.conv import conv_norm_act
from . import NECK_REGISTRY, Neck, neck_in_features

__all__ = ["CascadeFeatureFusion", "ICNeck"]

OUTPUTS = ("x_24", "x_12", "cff_12")


@register_config_keys
def add_ic_neck_keys(keys):
    # ICNeck's out_channels is MODEL.NECK.OUT_CHANNELS (mmseg: 128)
    keys.MODEL.NECK.ICNECK = CN()
    keys.MODEL.NECK.ICNECK.NORM = "SyncBN"
    keys.MODEL.NECK.ICNECK.ALIGN_CORNERS = False


class CascadeFeatureFusion(nn.Module):
    """The low-resolution map resized to the high one's size and through a 3x3 dilation-2
    conv-norm-ReLU (``conv_low``), the high one through a 1x1 conv-norm-ReLU (``conv_high``);
    returns ``(ReLU(sum), conv_low's output)``."""

    def __init__(self, low_channels: int, high_channels: int, out_channels: int, *, norm,
                 align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        self.conv_low = conv_norm_act(low_channels, out_channels, 3, norm=norm, dilation=2)
        self.conv_high = conv_norm_act(high_channels, out_channels, 1, norm=norm)

    def forward(self, x_low: torch.Tensor, x_high: torch.Tensor):
        x_low = self.conv_low(resize(x_low, x_high.shape[2:], self.align_corners))
        return F.relu(x_low + self.conv_high(x_high)), x_low


@NECK_REGISTRY.register()
class ICNeck(Neck):
    """Reads three backbone features (MODEL.NECK.IN_FEATURES, in mmseg's order sub1, sub2,
    sub4: strides 8, 16, 32) and returns ``x_24``, ``x_12``, ``cff_12`` (MODEL.NECK.OUT_CHANNELS
    each)."""

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__()
        self.in_features = neck_in_features(cfg, input_shape)
        if len(self.in_features) != 3:
            raise ValueError(f"ICNeck needs 3 inputs (sub1, sub2, sub4), got MODEL.NECK."
                             f"IN_FEATURES / backbone outputs {self.in_features}")
        c = cfg.MODEL.NECK.ICNECK
        out = cfg.MODEL.NECK.OUT_CHANNELS
        sub1, sub2, sub4 = (input_shape[n] for n in self.in_features)
        self.cff_24 = CascadeFeatureFusion(sub4.channels, sub2.channels, out, norm=c.NORM,
                                           align_corners=c.ALIGN_CORNERS)
        self.cff_12 = CascadeFeatureFusion(out, sub1.channels, out, norm=c.NORM,
                                           align_corners=c.ALIGN_CORNERS)
        self._shapes = {name: ShapeSpec(channels=out, stride=s.stride)
                        for name, s in zip(OUTPUTS, (sub2, sub1, sub1))}

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        x_sub1, x_sub2, x_sub4 = (features[n] for n in self.in_features)
        x_cff_24, x_24 = self.cff_24(x_sub4, x_sub2)
        x_cff_12, x_12 = self.cff_12(x_cff_24, x_sub1)
        return dict(zip(OUTPUTS, (x_24, x_12, x_cff_12)))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shapes)
