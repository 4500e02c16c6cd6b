"""DeepLabV3 head (mmseg's ``ASPPHead``)."""
from typing import List, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.conv import conv_norm_act
from .base import BaseDecodeHead, resize

__all__ = ["ASPPHead", "ASPPModule"]


class ASPPModule(nn.ModuleList):
    """Parallel branches on the same input: 1x1 for dilation 1, else 3x3 with padding = dilation."""

    def __init__(self, dilations: Sequence[int], in_channels: int, channels: int, *, norm: str):
        super().__init__(self.branch(in_channels, channels, d, norm) for d in dilations)
        self.dilations = tuple(dilations)

    @staticmethod
    def branch(in_channels: int, channels: int, dilation: int, norm: str) -> nn.Module:
        if dilation == 1:
            return conv_norm_act(in_channels, channels, 1, norm=norm)
        return conv_norm_act(in_channels, channels, 3, norm=norm, dilation=dilation,
                             padding=dilation)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [branch(x) for branch in self]


@SEM_SEG_HEADS_REGISTRY.register()
class ASPPHead(BaseDecodeHead):
    """``image_pool`` (global average pool -> 1x1 conv-norm-ReLU, broadcast back) and the ASPP
    branches, concatenated and fused by a 3x3 ``bottleneck``. mmseg's class default dilations
    are (1, 6, 12, 18); its DeepLabV3 configs (and MODEL.ASPP_HEAD.DILATIONS) use 1/12/24/36.

    Note: ``image_pool`` normalises a 1x1 map, so BN in training needs a batch of >= 2 images
    (mmseg's behaviour, kept for parity)."""

    aspp_module_class = ASPPModule  # DeepLabV3+ swaps in depthwise-separable branches

    @configurable
    def __init__(self, input_shape, *, dilations: Sequence[int] = (1, 6, 12, 18), **kwargs):
        super().__init__(input_shape, **kwargs)
        self.dilations = tuple(dilations)
        self.image_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            conv_norm_act(self.in_channels, self.channels, 1, norm=self.norm),
        )
        self.aspp_modules = self.aspp_module_class(
            self.dilations, self.in_channels, self.channels, norm=self.norm
        )
        self.bottleneck = conv_norm_act(
            (len(self.dilations) + 1) * self.channels, self.channels, 3, norm=self.norm
        )

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["dilations"] = list(cfg.MODEL.ASPP_HEAD.DILATIONS)
        return ret

    def aspp(self, x: torch.Tensor) -> torch.Tensor:
        """image_pool + ASPP branches -> bottleneck (shared with DeepLabV3+)."""
        pooled = resize(self.image_pool(x), x.shape[2:], self.align_corners)
        return self.bottleneck(torch.cat([pooled, *self.aspp_modules(x)], dim=1))

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        return self.aspp(x)
