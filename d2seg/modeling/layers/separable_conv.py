"""mmcv's DepthwiseSeparableConvModule: depthwise conv-norm-ReLU, then pointwise conv-norm-ReLU."""
import torch
from torch import nn

from .conv import conv_norm_act

__all__ = ["DepthwiseSeparableConvModule"]


class DepthwiseSeparableConvModule(nn.Module):
    """Same submodule names as mmcv (``depthwise_conv``, ``pointwise_conv``); both parts carry
    the norm and the ReLU, as mmcv does with its default ``dw_*``/``pw_*`` configs;
    ``dw_activation=False`` drops the depthwise ReLU (mmcv's ``dw_act_cfg=None``: Fast-SCNN);
    ``pw_norm`` / ``pw_activation`` False drop the pointwise norm (the conv gets a bias) / ReLU
    (``pw_norm_cfg=None`` / ``pw_act_cfg=None``: BiSeNetV2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *,
                 norm: str = "", stride: int = 1, padding: int = 0, dilation: int = 1,
                 dw_activation: bool = True, pw_norm: bool = True, pw_activation: bool = True):
        super().__init__()
        self.depthwise_conv = conv_norm_act(
            in_channels, in_channels, kernel_size, norm=norm, stride=stride, padding=padding,
            dilation=dilation, groups=in_channels, activation=dw_activation,
        )
        self.pointwise_conv = conv_norm_act(in_channels, out_channels, 1,
                                            norm=norm if pw_norm else "",
                                            activation=pw_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))
