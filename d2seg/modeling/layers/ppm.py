"""mmseg's Pooling Pyramid Module (PSPNet, UPerNet's top level)."""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...export.tracing import AdaptiveAvgPool2d
from .conv import conv_norm_act

__all__ = ["PPM"]


class PPM(nn.ModuleList):
    """For each scale: AdaptiveAvgPool(scale) -> 1x1 conv-norm-ReLU -> bilinear resize back.

    A ModuleList of ``Sequential(pool, conv)`` as in mmseg, so checkpoint keys are
    ``psp_modules.{k}.1.*``. ``forward`` returns the list of upsampled branch outputs. The
    pooling is ``nn.AdaptiveAvgPool2d`` in eager mode and exports with dynamic sizes
    (d2seg.export.tracing)."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int, *,
                 norm: str, align_corners: bool):
        super().__init__(
            nn.Sequential(
                AdaptiveAvgPool2d(s), conv_norm_act(in_channels, channels, 1, norm=norm)
            )
            for s in pool_scales
        )
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        size = x.shape[2:]
        return [
            F.interpolate(ppm(x), size=size, mode="bilinear", align_corners=self.align_corners)
            for ppm in self
        ]
