"""DeepLabV3+ head (mmseg's ``DepthwiseSeparableASPPHead``)."""
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.conv import conv_norm_act
from ..layers.separable_conv import DepthwiseSeparableConvModule
from .aspp import ASPPHead, ASPPModule
from .base import resize

__all__ = ["DepthwiseSeparableASPPHead", "DepthwiseSeparableASPPModule"]


class DepthwiseSeparableASPPModule(ASPPModule):
    """ASPP whose dilated branches are depthwise-separable (the 1x1 branch stays a conv)."""

    @staticmethod
    def branch(in_channels: int, channels: int, dilation: int, norm: str) -> nn.Module:
        if dilation == 1:
            return conv_norm_act(in_channels, channels, 1, norm=norm)
        return DepthwiseSeparableConvModule(
            in_channels, channels, 3, norm=norm, dilation=dilation, padding=dilation
        )


@SEM_SEG_HEADS_REGISTRY.register()
class DepthwiseSeparableASPPHead(ASPPHead):
    """DeepLabV3's ASPP (separable branches) on IN_FEATURES (res5), upsampled to the low-level
    feature ``c1_in_feature`` (res2, stride 4), concatenated with its 1x1 projection
    ``c1_bottleneck`` and refined by two separable 3x3 convs (``sep_bottleneck``).
    ``c1_in_feature=""`` drops the low-level branch (mmseg's ``c1_in_channels=0``)."""

    aspp_module_class = DepthwiseSeparableASPPModule

    @configurable
    def __init__(self, input_shape, *, c1_in_feature: str = "res2", c1_channels: int = 48,
                 **kwargs):
        super().__init__(input_shape, **kwargs)
        self.c1_in_feature = c1_in_feature
        if c1_in_feature:
            if c1_in_feature not in input_shape:
                raise ValueError(
                    f"{type(self).__name__}: C1_IN_FEATURE {c1_in_feature!r} is not produced by "
                    f"the backbone, which outputs {sorted(input_shape)}"
                )
            c1_shape = input_shape[c1_in_feature]
            self.c1_bottleneck = conv_norm_act(c1_shape.channels, c1_channels, 1, norm=self.norm)
            # logits come out at the low-level feature's resolution
            self.common_stride = c1_shape.stride
        else:
            self.c1_bottleneck = None
            c1_channels = 0
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(
                self.channels + c1_channels, self.channels, 3, norm=self.norm, padding=1
            ),
            DepthwiseSeparableConvModule(
                self.channels, self.channels, 3, norm=self.norm, padding=1
            ),
        )

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["c1_in_feature"] = cfg.MODEL.ASPP_HEAD.C1_IN_FEATURE
        ret["c1_channels"] = cfg.MODEL.ASPP_HEAD.C1_CHANNELS
        return ret

    def transform_inputs(self, features):
        # mmseg reads c1 from the raw backbone outputs (inputs[0]), not through in_index.
        c1 = features[self.c1_in_feature] if self.c1_bottleneck is not None else None
        return super().transform_inputs(features), c1

    def layers(self, inputs) -> torch.Tensor:
        x, c1 = inputs
        out = self.aspp(x)
        if c1 is not None:
            c1 = self.c1_bottleneck(c1)
            out = torch.cat([resize(out, c1.shape[2:], self.align_corners), c1], dim=1)
        return self.sep_bottleneck(out)
