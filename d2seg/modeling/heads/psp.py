"""PSPNet head (mmseg's ``PSPHead``)."""
from typing import Sequence

import torch

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.conv import conv_norm_act
from ..layers.ppm import PPM
from .base import BaseDecodeHead

__all__ = ["PSPHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class PSPHead(BaseDecodeHead):
    """Pyramid pooling (``psp_modules``) on the input, concatenated with the input and fused by
    a 3x3 ``bottleneck``."""

    @configurable
    def __init__(self, input_shape, *, pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs):
        super().__init__(input_shape, **kwargs)
        self.pool_scales = tuple(pool_scales)
        self.psp_modules = PPM(
            self.pool_scales, self.in_channels, self.channels,
            norm=self.norm, align_corners=self.align_corners,
        )
        self.bottleneck = conv_norm_act(
            self.in_channels + len(self.pool_scales) * self.channels, self.channels, 3,
            norm=self.norm,
        )

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["pool_scales"] = list(cfg.MODEL.PSP_HEAD.POOL_SCALES)
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))
