"""Semantic FPN's head (mmseg's ``FPNHead``): per input level a ``scale_heads.{i}`` of 3x3
conv-norm-ReLUs, each followed by a x2 bilinear upsample until the finest level's stride, then
the levels are summed and classified."""
import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.conv import conv_norm_act
from .base import BaseDecodeHead, resize

__all__ = ["FPNHead"]


class Upsample2x(nn.Module):
    """mmseg's ``Upsample(scale_factor=2)``: bilinear to exactly twice the input's size (holds
    no weights, but takes an index in ``scale_heads.{i}`` as in mmseg's Sequential)."""

    def __init__(self, align_corners: bool):
        super().__init__()
        self.align_corners = align_corners

    def forward(self, x):
        size = (x.shape[-2] * 2, x.shape[-1] * 2)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)


@SEM_SEG_HEADS_REGISTRY.register()
class FPNHead(BaseDecodeHead):
    """Reads all IN_FEATURES (finest first; mmseg forces ``multiple_select``). mmseg's
    ``feature_strides`` are the features' own strides, which must be powers of 2 times the first
    (smallest) one."""

    @configurable
    def __init__(self, input_shape, **kwargs):
        super().__init__(input_shape, **kwargs)
        if self.input_transform != "multiple_select":
            raise ValueError(
                f"FPNHead needs INPUT_TRANSFORM 'multiple_select', got {self.input_transform!r}"
            )
        strides = [input_shape[f].stride for f in self.in_features]
        ratios = [s / strides[0] for s in strides]
        if any(r < 1 or 2 ** round(math.log2(r)) != r for r in ratios):
            raise ValueError(f"FPNHead: IN_FEATURES {self.in_features} have strides {strides}: "
                             "the first must be the smallest and the others powers of 2 times it")
        self.feature_strides = strides
        self.scale_heads = nn.ModuleList()
        for cin, r in zip(self.in_channels, ratios):
            layers = []
            for k in range(max(1, round(math.log2(r)))):
                layers.append(conv_norm_act(cin if k == 0 else self.channels, self.channels, 3,
                                            norm=self.norm))
                if r != 1:
                    layers.append(Upsample2x(self.align_corners))
            self.scale_heads.append(nn.Sequential(*layers))

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["input_transform"] = "multiple_select"  # as mmseg, whatever the node says
        return ret

    def layers(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](inputs[0])
        for head, x in zip(self.scale_heads[1:], inputs[1:]):
            out = out + resize(head(x), out.shape[2:], self.align_corners)
        return out
