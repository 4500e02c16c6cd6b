"""SETR's multi-level aggregation head (mmseg's ``SETRMLAHead``): each input (MLANeck's outputs)
through ``up_convs.{i}`` = two 3x3 conv-norm-ReLUs to ``mla_channels`` + bilinear upsampling by
the node's UP_SCALE, concatenated (CONVS_DIM = inputs x mla_channels) and classified."""
from typing import List

import torch
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...config import register_config_keys
from ..layers.conv import conv_norm_act
from .base import BaseDecodeHead, head_config_node
from .setr_up import Upsample, up_scale_of

__all__ = ["SETRMLAHead"]


@register_config_keys
def add_setr_mla_head_keys(keys):
    keys.MODEL.SETR_MLA_HEAD = CN()
    keys.MODEL.SETR_MLA_HEAD.MLA_CHANNELS = 128  # mmseg's mla_channels: width of each branch


@SEM_SEG_HEADS_REGISTRY.register()
class SETRMLAHead(BaseDecodeHead):
    @configurable
    def __init__(self, input_shape, *, mla_channels: int = 128, up_scale: int = 4, **kwargs):
        super().__init__(input_shape, **kwargs)
        if self.input_transform != "multiple_select":
            raise ValueError(f"SETRMLAHead needs INPUT_TRANSFORM 'multiple_select', got "
                             f"{self.input_transform!r}")
        if mla_channels < 1 or self.channels != len(self.in_channels) * mla_channels:
            raise ValueError(
                f"SETRMLAHead: CONVS_DIM={self.channels} must be the number of IN_FEATURES "
                f"({len(self.in_channels)}) x MODEL.SETR_MLA_HEAD.MLA_CHANNELS={mla_channels}")
        self.mla_channels = mla_channels
        self.up_convs = nn.ModuleList(
            nn.Sequential(conv_norm_act(c, mla_channels, 3, norm=self.norm),
                          conv_norm_act(mla_channels, mla_channels, 3, norm=self.norm),
                          Upsample(up_scale, self.align_corners))
            for c in self.in_channels)

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["input_transform"] = "multiple_select"  # as mmseg, whatever the node says
        ret.update(mla_channels=cfg.MODEL.SETR_MLA_HEAD.MLA_CHANNELS,
                   up_scale=up_scale_of(head_config_node(cfg, head_cfg)))
        return ret

    def layers(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        return torch.cat([up_conv(x) for x, up_conv in zip(inputs, self.up_convs)], dim=1)
