"""MobileNetV2 (mmseg's ``MobileNetV2``) as a Detectron2 backbone whose outputs are named by
layer (``layer1`` .. ``layer7``; mmseg's ``out_indices`` (1, 2, 4, 6) are ``layer2``, ``layer3``,
``layer5``, ``layer7``).

Module names are mmseg's (``conv1``, ``layer{i}.{block}.conv.{0,1,2}``), mmcv's ConvModules
Detectron2 ``Conv2d`` with ``norm``, so mmseg checkpoints load by the generic ConvModule rule.
As in mmseg, a layer's stride and dilation apply to its first block only: the later blocks of a
"dilated" layer run at dilation 1 (mmseg's ``make_layer``; kept for parity with its weights).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from ...checkpoint.catalog import register_imagenet_weights_rule
from ...config import register_config_keys
from ..layers.conv import conv_norm_act
from ..layers.norm import norm_with
from .mobilenet_v3 import LayerSequenceBackbone, make_divisible

__all__ = ["MobileNetV2", "InvertedResidual", "build_mobilenet_v2_backbone"]

# expand ratio, channels, blocks (mmseg's arch_settings)
ARCH_SETTINGS = [[1, 16, 1], [6, 24, 2], [6, 32, 3], [6, 64, 4], [6, 96, 3], [6, 160, 3],
                 [6, 320, 1]]


@register_config_keys
def add_mobilenet_v2_keys(keys):
    # mmseg configs/mobilenet_v2/*_m-v2-d8_*: output stride 8
    keys.MODEL.MOBILENET_V2 = CN()
    keys.MODEL.MOBILENET_V2.WIDEN_FACTOR = 1.0
    keys.MODEL.MOBILENET_V2.STRIDES = [1, 2, 2, 1, 1, 1, 1]  # of each layer's first block
    keys.MODEL.MOBILENET_V2.DILATIONS = [1, 1, 1, 2, 2, 4, 4]  # of each layer's first block
    keys.MODEL.MOBILENET_V2.NORM = "SyncBN"
    keys.MODEL.MOBILENET_V2.NORM_EPS = 0.0  # 0 = the layer's default
    keys.MODEL.MOBILENET_V2.NORM_MOMENTUM = 0.0  # 0 = the layer's default (0.1)
    keys.MODEL.MOBILENET_V2.OUT_FEATURES = ["layer2", "layer3", "layer5", "layer7"]


def _conv(cin, cout, k, norm, relu6, **kwargs):
    """mmcv's ConvModule with ReLU6 (or none) and its init (Kaiming fan_out, norm 1/0), which
    is also mmseg MobileNetV2's init_cfg."""
    conv = conv_norm_act(cin, cout, k, norm=norm, **kwargs)
    conv.activation = F.relu6 if relu6 else None
    return conv


class InvertedResidual(nn.Module):
    """mmseg's MobileNetV2 block: [1x1 expand] -> 3x3 depthwise -> 1x1 linear (``conv.0..2``);
    residual at stride 1 with equal widths."""

    def __init__(self, in_channels, out_channels, *, stride, expand_ratio, dilation, norm):
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        hidden = int(round(in_channels * expand_ratio))
        layers = [_conv(in_channels, hidden, 1, norm, True)] if expand_ratio != 1 else []
        layers += [
            _conv(hidden, hidden, 3, norm, True, stride=stride, dilation=dilation, groups=hidden),
            _conv(hidden, out_channels, 1, norm, False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(LayerSequenceBackbone):
    """mmseg's MobileNetV2: stem (3x3 stride 2, ReLU6) and 7 layers of inverted residuals."""

    def __init__(self, *, in_channels: int = 3, widen_factor: float = 1.0,
                 strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4), norm="BN",
                 out_features=("layer2", "layer3", "layer5", "layer7")):
        super().__init__()
        n = len(ARCH_SETTINGS)
        if len(strides) != n or any(s not in (1, 2) for s in strides):
            raise ValueError(f"MobileNetV2: STRIDES={list(strides)} must be {n} values of 1 or 2")
        if len(dilations) != n or any(not isinstance(d, int) or d < 1 for d in dilations):
            raise ValueError(f"MobileNetV2: DILATIONS={list(dilations)} must be {n} ints >= 1")
        if widen_factor <= 0:
            raise ValueError(f"MobileNetV2: WIDEN_FACTOR={widen_factor} must be > 0")
        names = [f"layer{i + 1}" for i in range(n)]
        if not out_features or any(f not in names for f in out_features):
            raise ValueError(f"MobileNetV2: OUT_FEATURES {list(out_features)} must be among "
                             f"layer1..layer{n}")
        cin = make_divisible(32 * widen_factor, 8)
        self.conv1 = _conv(in_channels, cin, 3, norm, True, stride=2)
        channels, stride, total = {}, {}, 2
        for name, (ratio, width, blocks), s, d in zip(names, ARCH_SETTINGS, strides, dilations):
            cout = make_divisible(width * widen_factor, 8)
            layer = []
            for b in range(blocks):
                layer.append(InvertedResidual(cin, cout, stride=s if b == 0 else 1,
                                              expand_ratio=ratio, dilation=d if b == 0 else 1,
                                              norm=norm))
                cin = cout
            self.add_module(name, nn.Sequential(*layer))
            total *= s
            channels[name], stride[name] = cout, total
        self._set_layer_outputs(names, channels, stride, out_features)

    def forward(self, x: torch.Tensor):
        return self._run_layers(self.conv1(x))


@register_imagenet_weights_rule("build_mobilenet_v2_backbone")
def mobilenet_v2_imagenet_weights(cfg) -> Optional[str]:
    """mmcls's MobileNetV2 at width 1.0, which mmseg's configs load."""
    return "mmcls://mobilenet_v2" if cfg.MODEL.MOBILENET_V2.WIDEN_FACTOR == 1.0 else None


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_backbone(cfg, input_shape: ShapeSpec) -> MobileNetV2:
    """MobileNetV2 from MODEL.MOBILENET_V2 (see configs/_base_/models/fcn_m-v2-d8.yaml)."""
    c = cfg.MODEL.MOBILENET_V2
    return MobileNetV2(in_channels=input_shape.channels, widen_factor=c.WIDEN_FACTOR,
                       strides=c.STRIDES, dilations=c.DILATIONS,
                       norm=norm_with(c.NORM, c.NORM_EPS, c.NORM_MOMENTUM),
                       out_features=c.OUT_FEATURES)
