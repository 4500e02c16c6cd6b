"""SegFormer's all-MLP head (mmseg's ``SegformerHead``)."""
from typing import List

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.conv import conv_norm_act
from .base import BaseDecodeHead, resize

__all__ = ["SegformerHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class SegformerHead(BaseDecodeHead):
    """Reads all IN_FEATURES (fine to coarse; mmseg forces ``multiple_select``): each through
    a 1x1 conv-norm-ReLU (``convs``) to CONVS_DIM channels, upsampled to the first one,
    concatenated (in IN_FEATURES order) and fused by a 1x1 conv-norm-ReLU (``fusion_conv``)."""

    @configurable
    def __init__(self, input_shape, **kwargs):
        super().__init__(input_shape, **kwargs)
        if self.input_transform != "multiple_select":
            raise ValueError(
                f"SegformerHead needs INPUT_TRANSFORM 'multiple_select', got "
                f"{self.input_transform!r}"
            )
        self.convs = nn.ModuleList(
            conv_norm_act(c, self.channels, 1, norm=self.norm) for c in self.in_channels
        )
        self.fusion_conv = conv_norm_act(
            self.channels * len(self.in_channels), self.channels, 1, norm=self.norm
        )

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["input_transform"] = "multiple_select"  # as mmseg, whatever the node says
        return ret

    def layers(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        size = inputs[0].shape[2:]
        outs = [resize(conv(x), size, self.align_corners) for conv, x in zip(self.convs, inputs)]
        return self.fusion_conv(torch.cat(outs, dim=1))
