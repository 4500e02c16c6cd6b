"""GCNet's global context block, as mmcv 1.7's ``ContextBlock``."""
from typing import Sequence

import torch
from torch import nn

__all__ = ["ContextBlock"]


def _transform(channels: int, planes: int) -> nn.Sequential:
    # mmcv's names: channel_*_conv.{0: conv, 1: LayerNorm, 2: ReLU, 3: conv}
    return nn.Sequential(
        nn.Conv2d(channels, planes, kernel_size=1),
        nn.LayerNorm([planes, 1, 1]),
        nn.ReLU(inplace=True),
        nn.Conv2d(planes, channels, kernel_size=1),
    )


class ContextBlock(nn.Module):
    """Pools one global context vector (softmax attention over H*W, or average pooling),
    transforms it with a bottleneck (``int(in_channels * ratio)`` channels) and fuses it into
    every position by addition and/or sigmoid multiplication. The last conv of each transform
    is zero-initialised, so the block starts as the identity (``channel_add``)."""

    def __init__(self, in_channels: int, ratio: float, pooling_type: str = "att",
                 fusion_types: Sequence[str] = ("channel_add",)):
        super().__init__()
        if pooling_type not in ("att", "avg"):
            raise ValueError(f"ContextBlock: pooling_type={pooling_type!r} is not 'att' or 'avg'")
        if not fusion_types or any(f not in ("channel_add", "channel_mul") for f in fusion_types):
            raise ValueError(
                f"ContextBlock: fusion_types={list(fusion_types)} must be a non-empty subset of "
                "('channel_add', 'channel_mul')"
            )
        self.in_channels = in_channels
        self.planes = int(in_channels * ratio)
        self.pooling_type = pooling_type
        if pooling_type == "att":
            self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1)
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_mask.bias)
        else:
            self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.channel_add_conv = (
            _transform(in_channels, self.planes) if "channel_add" in fusion_types else None
        )
        self.channel_mul_conv = (
            _transform(in_channels, self.planes) if "channel_mul" in fusion_types else None
        )
        for transform in (self.channel_add_conv, self.channel_mul_conv):
            if transform is not None:
                nn.init.zeros_(transform[-1].weight)
                nn.init.zeros_(transform[-1].bias)

    def spatial_pool(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W -> N x C x 1 x 1 context."""
        if self.pooling_type == "avg":
            return self.avg_pool(x)
        n, c = x.shape[:2]
        mask = self.conv_mask(x).view(n, 1, -1).softmax(dim=2)  # N x 1 x HW
        return torch.matmul(x.view(n, c, -1), mask.transpose(1, 2)).view(n, c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.spatial_pool(x)
        out = x
        if self.channel_mul_conv is not None:
            out = out * torch.sigmoid(self.channel_mul_conv(context))
        if self.channel_add_conv is not None:
            out = out + self.channel_add_conv(context)
        return out

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, planes={self.planes}, "
                f"pooling={self.pooling_type!r}")
