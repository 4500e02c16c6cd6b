"""MobileNetV3 small / large at output stride 8 (mmseg's ``MobileNetV3``) as a Detectron2
backbone whose outputs are named by layer (``layer0`` .. ``layer16``; LR-ASPP reads
``layer1``, ``layer3``, ``layer16`` of the large one, mmseg's ``out_indices`` (1, 3, 16)).

Module names are mmseg's (``layer{i}.expand_conv`` / ``depthwise_conv`` / ``se.conv{1,2}`` /
``linear_conv``), mmcv's ConvModules Detectron2 ``Conv2d`` with ``norm``. As in mmseg, the stem
and every depthwise conv that the architecture gives stride 2 pad as TF "SAME"
(mmcv's ``Conv2dAdaptivePadding``), and the last two stride-2 layers are set to stride 1 with the
later layers dilated 2 and 4 (output stride 8).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...checkpoint.catalog import register_imagenet_weights_rule
from ...config import register_config_keys
from ...export.tracing import is_exporting
from ..layers.conv import conv_norm_act, init_conv_module
from ..layers.norm import norm_with

__all__ = ["MobileNetV3", "InvertedResidualV3", "Conv2dAdaptivePadding",
           "build_mobilenet_v3_backbone"]

# kernel, mid channels, out channels, SE, activation, stride (mmseg's arch_settings)
ARCH_SETTINGS = {
    "small": [[3, 16, 16, True, "ReLU", 2], [3, 72, 24, False, "ReLU", 2],
              [3, 88, 24, False, "ReLU", 1], [5, 96, 40, True, "HSwish", 2],
              [5, 240, 40, True, "HSwish", 1], [5, 240, 40, True, "HSwish", 1],
              [5, 120, 48, True, "HSwish", 1], [5, 144, 48, True, "HSwish", 1],
              [5, 288, 96, True, "HSwish", 2], [5, 576, 96, True, "HSwish", 1],
              [5, 576, 96, True, "HSwish", 1]],
    "large": [[3, 16, 16, False, "ReLU", 1], [3, 64, 24, False, "ReLU", 2],
              [3, 72, 24, False, "ReLU", 1], [5, 72, 40, True, "ReLU", 2],
              [5, 120, 40, True, "ReLU", 1], [5, 120, 40, True, "ReLU", 1],
              [3, 240, 80, False, "HSwish", 2], [3, 200, 80, False, "HSwish", 1],
              [3, 184, 80, False, "HSwish", 1], [3, 184, 80, False, "HSwish", 1],
              [3, 480, 112, True, "HSwish", 1], [3, 672, 112, True, "HSwish", 1],
              [5, 672, 160, True, "HSwish", 2], [5, 960, 160, True, "HSwish", 1],
              [5, 960, 160, True, "HSwish", 1]],
}
# mmseg's OS8 surgery: these layers get stride 1; from the first one on, layers are dilated 2,
# and from the second one on 4; the first layer whose width `reduction_factor` divides
OS8_LAYERS = {"small": (4, 9), "large": (7, 13)}
REDUCED_FROM = {"small": 8, "large": 12}
ACTIVATIONS = {"ReLU": F.relu, "HSwish": F.hardswish}


@register_config_keys
def add_mobilenet_v3_keys(keys):
    # mmseg configs/_base_/models/lraspp_m-v3-d8.py (large); small: configs/mobilenet_v3/*v3s*
    keys.MODEL.MOBILENET_V3 = CN()
    keys.MODEL.MOBILENET_V3.ARCH = "large"  # "small" or "large"
    keys.MODEL.MOBILENET_V3.NORM = "SyncBN"
    keys.MODEL.MOBILENET_V3.NORM_EPS = 1e-3  # mmseg's norm_cfg eps (0 = the layer's default)
    keys.MODEL.MOBILENET_V3.NORM_MOMENTUM = 0.0  # 0 = the layer's default (0.1)
    # widths of the last layers (from layer13 / layer9 on) divided by this (mmseg's default 1)
    keys.MODEL.MOBILENET_V3.REDUCTION_FACTOR = 1
    keys.MODEL.MOBILENET_V3.OUT_FEATURES = ["layer1", "layer3", "layer16"]  # small: 0, 1, 12


class Conv2dAdaptivePadding(Conv2d):
    """Detectron2 ``Conv2d`` padding as TF "SAME" (mmcv's ``Conv2dAdaptivePadding``): the output
    is ceil(input / stride), the odd pixel of padding at the bottom / right. The padding follows
    the input size, also in an exported graph (sizes are graph values there)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        for k, s, d in zip(self.kernel_size, self.stride, self.dilation):
            if (k - 1) * d + 1 < s:  # the padding below is then >= 0 without a max(., 0)
                raise ValueError(f"Conv2dAdaptivePadding: kernel {k} (dilation {d}) < stride {s}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            pads.append(((size + s - 1) // s - 1) * s + (k - 1) * d + 1 - size)
        (ph, pw), exporting = pads, is_exporting()
        if exporting or ph > 0 or pw > 0:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def _conv(cin, cout, k, norm, activation, *, stride=1, dilation=1, groups=1, same=False):
    """mmcv's ConvModule (``Conv2dAdaptivePadding`` when ``same``) with its init."""
    if not same:
        conv = conv_norm_act(cin, cout, k, norm=norm, stride=stride, dilation=dilation,
                             groups=groups)
        conv.activation = activation
        return conv
    conv = Conv2dAdaptivePadding(cin, cout, k, stride=stride, dilation=dilation, groups=groups,
                                 bias=not norm, norm=get_norm(norm, cout), activation=activation)
    init_conv_module(conv)
    return conv


class SELayer(nn.Module):
    """Squeeze-excitation: global mean -> 1x1 (ReLU) -> 1x1 -> h-sigmoid ((x + 3) / 6 in
    [0, 1]) -> channel scale; squeeze width ``make_divisible(channels // 4, 8)``."""

    def __init__(self, channels: int, ratio: int = 4):
        super().__init__()
        mid = make_divisible(channels // ratio, 8)
        self.conv1 = _conv(channels, mid, 1, "", F.relu)
        self.conv2 = _conv(mid, channels, 1, "", F.hardsigmoid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # global pooling (not a mean over dims 2, 3) exports as GlobalAveragePool, which ONNX
        # Runtime runs on uint8 in an INT8 graph; ReduceMean runs in float there
        return x * self.conv2(self.conv1(F.adaptive_avg_pool2d(x, 1)))


def make_divisible(value: float, divisor: int, min_ratio: float = 0.9) -> int:
    """mmseg's make_divisible: nearest multiple of ``divisor``, never below 90% of ``value``."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < min_ratio * value else new_value


class InvertedResidualV3(nn.Module):
    """[1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear; residual at stride 1, equal widths."""

    def __init__(self, in_channels, out_channels, mid_channels, kernel_size, *, stride, dilation,
                 same_padding, with_se, activation, norm):
        super().__init__()
        self.with_res_shortcut = stride == 1 and in_channels == out_channels
        if in_channels != mid_channels:
            self.expand_conv = _conv(in_channels, mid_channels, 1, norm, activation)
        else:
            self.expand_conv = None
        self.depthwise_conv = _conv(mid_channels, mid_channels, kernel_size, norm, activation,
                                    stride=stride, dilation=dilation, groups=mid_channels,
                                    same=same_padding)
        self.se = SELayer(mid_channels) if with_se else None
        self.linear_conv = _conv(mid_channels, out_channels, 1, norm, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand_conv(x) if self.expand_conv is not None else x
        out = self.depthwise_conv(out)
        if self.se is not None:
            out = self.se(out)
        out = self.linear_conv(out)
        return x + out if self.with_res_shortcut else out


class LayerSequenceBackbone(Backbone):
    """A backbone that runs its children ``layer_names`` in order and returns those named in
    ``out_features`` (stopping after the last one); shared by MobileNetV2 and V3."""

    def _set_layer_outputs(self, names, channels, strides, out_features):
        self.layer_names = list(names)
        self._out_features = list(out_features)
        self._out_feature_channels = {f: channels[f] for f in out_features}
        self._out_feature_strides = {f: strides[f] for f in out_features}
        self._last = max(names.index(f) for f in out_features)

    def _run_layers(self, x: torch.Tensor):
        outs = {}
        for name in self.layer_names[: self._last + 1]:
            x = getattr(self, name)(x)
            if name in self._out_feature_channels:
                outs[name] = x
        return outs


class MobileNetV3(LayerSequenceBackbone):
    """mmseg's MobileNetV3 (OS8); from scratch convs are Kaiming (fan_out, ReLU), norms 1/0."""

    def __init__(self, arch: str = "large", *, in_channels: int = 3, norm="BN",
                 reduction_factor: int = 1, out_features=("layer1", "layer3", "layer16")):
        super().__init__()
        if arch not in ARCH_SETTINGS:
            raise ValueError(f"MobileNetV3: ARCH={arch!r} is not one of {sorted(ARCH_SETTINGS)}")
        if not isinstance(reduction_factor, int) or reduction_factor < 1:
            raise ValueError(f"MobileNetV3: REDUCTION_FACTOR={reduction_factor!r} must be an "
                             "int >= 1")
        settings = ARCH_SETTINGS[arch]
        names = [f"layer{i}" for i in range(len(settings) + 2)]
        bad = [f for f in out_features if f not in names]
        if bad or not out_features:
            raise ValueError(f"MobileNetV3 ({arch}): OUT_FEATURES {list(out_features)} must be "
                             f"among layer0..layer{len(settings) + 1}")
        first, second = OS8_LAYERS[arch]
        self.layer0 = _conv(in_channels, 16, 3, norm, F.hardswish, stride=2, same=True)
        channels, stride = {"layer0": 16}, {"layer0": 2}
        cin, total = 16, 2
        for i, (k, mid, cout, with_se, act, s) in enumerate(settings, start=1):
            if i - 1 >= REDUCED_FROM[arch]:
                mid, cout = mid // reduction_factor, cout // reduction_factor
            dilation = 1 if i < first else 2 if i < second else 4
            layer_stride = 1 if i in (first, second) else s
            self.add_module(f"layer{i}", InvertedResidualV3(
                cin, cout, mid, k, stride=layer_stride, dilation=dilation,
                same_padding=s == 2, with_se=with_se, activation=ACTIVATIONS[act], norm=norm))
            total *= layer_stride
            cin = channels[f"layer{i}"] = cout
            stride[f"layer{i}"] = total
        last = names[-1]
        # mmseg's last 1x1 ConvModule (dilation 4 on a 1x1 kernel: no effect)
        self.add_module(last, _conv(cin, 576 if arch == "small" else 960, 1, norm, F.hardswish))
        channels[last], stride[last] = (576 if arch == "small" else 960), total
        self._set_layer_outputs(names, channels, stride, out_features)

    def forward(self, x: torch.Tensor):
        return self._run_layers(x)


@register_imagenet_weights_rule("build_mobilenet_v3_backbone")
def mobilenet_v3_imagenet_weights(cfg) -> Optional[str]:
    """The contributed MobileNetV3 large / small ImageNet weights mmseg's LR-ASPP configs load."""
    m = cfg.MODEL.MOBILENET_V3
    if m.ARCH in ("large", "small") and m.REDUCTION_FACTOR == 1:
        return f"open-mmlab://contrib/mobilenet_v3_{m.ARCH}"
    return None


@BACKBONE_REGISTRY.register()
def build_mobilenet_v3_backbone(cfg, input_shape: ShapeSpec) -> MobileNetV3:
    """MobileNetV3 from MODEL.MOBILENET_V3 (see configs/_base_/models/lraspp_m-v3-d8.yaml)."""
    c = cfg.MODEL.MOBILENET_V3
    return MobileNetV3(c.ARCH, in_channels=input_shape.channels,
                       norm=norm_with(c.NORM, c.NORM_EPS, c.NORM_MOMENTUM),
                       reduction_factor=c.REDUCTION_FACTOR, out_features=c.OUT_FEATURES)
