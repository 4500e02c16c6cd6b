"""mmcv's ConvModule (conv -> norm -> ReLU) expressed with Detectron2's ``Conv2d``."""
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, get_norm

__all__ = ["conv_norm_act", "init_conv_module"]


def init_conv_module(conv: nn.Conv2d) -> None:
    """mmcv ConvModule's init: kaiming normal (fan_out, relu) weights, zero bias, norm 1/0."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    norm = getattr(conv, "norm", None)
    if norm is not None and getattr(norm, "weight", None) is not None:
        nn.init.ones_(norm.weight)
        nn.init.zeros_(norm.bias)


def conv_norm_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    *,
    norm: str = "",
    activation: bool = True,
    stride: int = 1,
    padding=None,
    dilation: int = 1,
    groups: int = 1,
) -> Conv2d:
    """A conv followed by ``norm`` and ReLU; like mmcv's ``bias='auto'`` it has a bias only
    without a norm. ``padding`` defaults to "same" (``dilation * (kernel_size // 2)``)."""
    if padding is None:
        padding = dilation * (kernel_size // 2)
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=F.relu if activation else None,
    )
    init_conv_module(conv)
    return conv
