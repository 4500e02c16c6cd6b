"""Lite R-ASPP head of MobileNetV3 (mmseg's ``LRASPPHead``)."""
from typing import List, Sequence

import torch
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import Conv2d, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...config import register_config_keys
from ...export.tracing import is_exporting
from ..layers.conv import init_conv_module
from .base import BaseDecodeHead, resize

__all__ = ["LRASPPHead"]

# mmseg's image pooling: a fixed window, not a global pool (the paper's 49x49 at 1/16 of 768x768)
POOL_KERNEL = 49
POOL_STRIDE = (16, 20)


@register_config_keys
def add_lraspp_keys(keys):
    keys.MODEL.LRASPP_HEAD = CN()
    # widths of the 1x1 skip branches on IN_FEATURES[:-1] (mmseg's branch_channels)
    keys.MODEL.LRASPP_HEAD.BRANCH_CHANNELS = [32, 64]


def _conv_module(cin: int, cout: int, norm, activation) -> Conv2d:
    """mmcv ConvModule 1x1 with ``bias=False`` (as mmseg builds every one in this head)."""
    conv = Conv2d(cin, cout, 1, bias=False, norm=get_norm(norm, cout), activation=activation)
    init_conv_module(conv)
    return conv


@SEM_SEG_HEADS_REGISTRY.register()
class LRASPPHead(BaseDecodeHead):
    """On the last feature: ``aspp_conv`` (1x1-norm-ReLU) gated by the sigmoid of a 1x1 conv of
    its 49x49 average pool (stride 16, 20) upsampled back, then ``conv_up_input``; then, for each
    earlier feature from the coarsest, upsample, concatenate its 1x1 branch conv and fuse by a
    1x1-norm-ReLU. Logits at the stride of IN_FEATURES[0]; INPUT_TRANSFORM "multiple_select".

    The pool has no padding: the last feature must be at least 49x49 (inputs of at least
    49 x its stride, 392 px at stride 8); smaller inputs raise a ValueError saying so (mmseg
    fails inside AvgPool2d). Use slide inference with such crops for smaller images."""

    @configurable
    def __init__(self, input_shape, *, branch_channels: Sequence[int] = (32, 64), **kwargs):
        super().__init__(input_shape, **kwargs)
        if self.input_transform != "multiple_select":
            raise ValueError(f"LRASPPHead needs INPUT_TRANSFORM 'multiple_select', got "
                             f"{self.input_transform!r}")
        if len(branch_channels) != len(self.in_channels) - 1:
            raise ValueError(f"LRASPPHead: MODEL.LRASPP_HEAD.BRANCH_CHANNELS="
                             f"{list(branch_channels)} needs one value per IN_FEATURES but the "
                             f"last ({self.in_features})")
        self.branch_channels = list(branch_channels)
        self.last_stride = input_shape[self.in_features[-1]].stride
        self.convs = nn.Sequential()
        self.conv_ups = nn.Sequential()
        for i, c in enumerate(branch_channels):  # plain convs: torch's default init, as mmseg
            self.convs.add_module(f"conv{i}", nn.Conv2d(self.in_channels[i], c, 1, bias=False))
            self.conv_ups.add_module(f"conv_up{i}", _conv_module(
                self.channels + c, self.channels, self.norm, torch.relu))
        self.conv_up_input = nn.Conv2d(self.channels, self.channels, 1)
        self.aspp_conv = _conv_module(self.in_channels[-1], self.channels, self.norm, torch.relu)
        self.image_pool = nn.Sequential(
            nn.AvgPool2d(kernel_size=POOL_KERNEL, stride=POOL_STRIDE),
            _conv_module(self.in_channels[-1], self.channels, "", torch.sigmoid),
        )

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["branch_channels"] = list(cfg.MODEL.LRASPP_HEAD.BRANCH_CHANNELS)
        return ret

    def check_pool_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if not is_exporting() and min(h, w) < POOL_KERNEL:
            raise ValueError(
                f"LRASPPHead: its image pooling (AvgPool2d({POOL_KERNEL}, stride {POOL_STRIDE}), "
                f"as MMSegmentation's) needs the stride-{self.last_stride} feature "
                f"{self.in_features[-1]!r} to be at least {POOL_KERNEL}x{POOL_KERNEL}, got "
                f"{h}x{w}: give inputs of at least {POOL_KERNEL * self.last_stride} px on each "
                f"side (e.g. TEST.MODE 'slide' with TEST.CROP_SIZE at least that)")

    def layers(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        x = inputs[-1]
        self.check_pool_size(x)
        x = self.aspp_conv(x) * resize(self.image_pool(x), x.shape[2:], self.align_corners)
        x = self.conv_up_input(x)
        for i in range(len(self.branch_channels) - 1, -1, -1):
            x = resize(x, inputs[i].shape[2:], self.align_corners)
            x = self.conv_ups[i](torch.cat([x, self.convs[i](inputs[i])], 1))
        return x
