"""UPerNet head (mmseg's ``UPerHead``): PPM on the top level + FPN, all levels fused."""
from typing import List, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.conv import conv_norm_act
from ..layers.ppm import PPM
from .base import BaseDecodeHead, resize

__all__ = ["UPerHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class UPerHead(BaseDecodeHead):
    """Reads all IN_FEATURES (fine to coarse; mmseg forces ``multiple_select``).

    Top level: PPM + 3x3 ``bottleneck``; other levels: 1x1 ``lateral_convs``. Top-down
    bilinear upsample-and-add, 3x3 ``fpn_convs`` on all but the top, then every level is
    upsampled to the finest one, concatenated and fused by a 3x3 ``fpn_bottleneck``."""

    @configurable
    def __init__(self, input_shape, *, pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs):
        super().__init__(input_shape, **kwargs)
        if self.input_transform != "multiple_select":
            raise ValueError(
                f"UPerHead needs INPUT_TRANSFORM 'multiple_select', got {self.input_transform!r}"
            )
        self.pool_scales = tuple(pool_scales)
        top = self.in_channels[-1]
        self.psp_modules = PPM(
            self.pool_scales, top, self.channels, norm=self.norm, align_corners=self.align_corners
        )
        self.bottleneck = conv_norm_act(
            top + len(self.pool_scales) * self.channels, self.channels, 3, norm=self.norm
        )
        # (mmseg's inplace=False on these only avoids aliasing; ReLU results are the same)
        self.lateral_convs = nn.ModuleList(
            conv_norm_act(c, self.channels, 1, norm=self.norm) for c in self.in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            conv_norm_act(self.channels, self.channels, 3, norm=self.norm)
            for _ in self.in_channels[:-1]
        )
        self.fpn_bottleneck = conv_norm_act(
            len(self.in_channels) * self.channels, self.channels, 3, norm=self.norm
        )

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["pool_scales"] = list(cfg.MODEL.UPER_HEAD.POOL_SCALES)
        ret["input_transform"] = "multiple_select"  # as mmseg, whatever the node says
        return ret

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def layers(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + resize(
                laterals[i], laterals[i - 1].shape[2:], self.align_corners
            )
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [resize(o, size, self.align_corners) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))
