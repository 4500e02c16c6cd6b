"""CGNet (mmseg's ``CGNet``) as a Detectron2 backbone with outputs ``stage0`` (stem + 2x input
injection, stride 2), ``stage1`` (stride 4) and ``stage2`` (stride 8): mmseg's 3 outputs.

Module names are mmseg's (``stem``, ``inject_2x/4x``, ``norm_prelu_{0,1,2}``, ``level{1,2}.{i}``
with ``conv1x1``, ``f_loc``, ``f_sur``, ``bottleneck``, ``f_glo.fc``) as the generic mmseg key
conversion (d2seg/checkpoint/mmseg.py) renames them: mmcv's ``bn`` is ``norm`` and a ConvModule
is a Detectron2 ``Conv2d`` whose PReLU keeps mmcv's name ``activate``.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...config import register_config_keys
from ..layers.norm import norm_with

__all__ = ["CGNet", "ContextGuidedBlock", "build_cgnet_backbone"]

FEATURES = ("stage0", "stage1", "stage2")


@register_config_keys
def add_cgnet_keys(keys):
    # mmseg configs/_base_/models/cgnet.py
    keys.MODEL.CGNET = CN()
    keys.MODEL.CGNET.NUM_CHANNELS = [32, 64, 128]  # stem, stage 1, stage 2
    keys.MODEL.CGNET.NUM_BLOCKS = [3, 21]  # CG blocks of stages 1 and 2
    keys.MODEL.CGNET.DILATIONS = [2, 4]  # of the surrounding-context convs
    keys.MODEL.CGNET.REDUCTIONS = [8, 16]  # of the global context extractors
    keys.MODEL.CGNET.NORM = "SyncBN"
    keys.MODEL.CGNET.NORM_EPS = 1e-3  # mmseg's norm_cfg eps (0 = the layer's default)
    keys.MODEL.CGNET.NORM_MOMENTUM = 0.0  # 0 = default 0.1
    keys.MODEL.CGNET.OUT_FEATURES = list(FEATURES)


class ConvPReLU(Conv2d):
    """mmcv ``ConvModule(conv, norm, act_cfg=PReLU)``: conv without bias, norm, per-channel
    PReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, norm):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=kernel_size // 2, bias=False, norm=get_norm(norm, out_channels))
        self.activate = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(super().forward(x))


class GlobalContextExtractor(nn.Module):
    """Squeeze-and-excitation: global average -> fc -> ReLU -> fc -> sigmoid channel gates."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # global pooling exports as GlobalAveragePool (uint8 in an INT8 graph, unlike ReduceMean)
        return x * self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))[:, :, None, None]


class ContextGuidedBlock(nn.Module):
    """``conv1x1`` (a 3x3 stride-2 conv when downsampling, with the full width; else 1x1 to half
    the width) -> local (depthwise 3x3) and surrounding (dilated depthwise 3x3) features,
    concatenated -> norm -> PReLU (-> 1x1 ``bottleneck`` when downsampling) -> global context
    gates; residual when not downsampling."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, reduction: int,
                 downsample: bool, norm):
        super().__init__()
        self.downsample = downsample
        channels = out_channels if downsample else out_channels // 2
        self.conv1x1 = ConvPReLU(in_channels, channels, 3 if downsample else 1,
                                 2 if downsample else 1, norm)
        self.f_loc = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.f_sur = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation,
                               groups=channels, bias=False)
        self.norm = get_norm(norm, 2 * channels)  # mmseg's ``bn``
        self.activate = nn.PReLU(2 * channels)
        if downsample:
            self.bottleneck = nn.Conv2d(2 * channels, out_channels, 1, bias=False)
        self.f_glo = GlobalContextExtractor(out_channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x)
        out = self.activate(self.norm(torch.cat([self.f_loc(out), self.f_sur(out)], 1)))
        if self.downsample:
            return self.f_glo(self.bottleneck(out))
        return x + self.f_glo(out)


class InputInjection(nn.Module):
    """The image average-pooled (3x3, stride 2, zero padding counted) ``num_downsampling``
    times."""

    def __init__(self, num_downsampling: int):
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1)
                                  for _ in range(num_downsampling))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


def _norm_prelu(channels: int, norm) -> nn.Sequential:
    return nn.Sequential(get_norm(norm, channels), nn.PReLU(channels))


class CGNet(Backbone):
    """mmseg's CGNet with its default ``init_cfg``: Kaiming normal (fan_out, ReLU) convs and
    linears with zero bias, norms 1/0 and PReLU slopes 0 (trained from scratch)."""

    def __init__(self, in_channels: int = 3, *, num_channels=(32, 64, 128), num_blocks=(3, 21),
                 dilations=(2, 4), reductions=(8, 16), norm="BN", out_features=FEATURES):
        super().__init__()
        bad = [f for f in out_features if f not in FEATURES]
        if bad or not out_features:
            raise ValueError(f"CGNet: OUT_FEATURES {list(out_features)} must be among {FEATURES}")
        for key, value, n in (("NUM_CHANNELS", num_channels, 3), ("NUM_BLOCKS", num_blocks, 2),
                              ("DILATIONS", dilations, 2), ("REDUCTIONS", reductions, 2)):
            if len(value) != n or min(value) < 1:
                raise ValueError(f"CGNet: {key}={list(value)} needs {n} positive values")
        for c, r in zip(num_channels[1:], reductions):
            if c % 2 or c < r:
                raise ValueError(f"CGNet: NUM_CHANNELS={list(num_channels)} must be even and at "
                                 f"least REDUCTIONS={list(reductions)} in stages 1 and 2 (the "
                                 "blocks halve the width; the context gates divide it)")
        c0, c1, c2 = num_channels
        self.stem = nn.ModuleList(
            ConvPReLU(in_channels if i == 0 else c0, c0, 3, 2 if i == 0 else 1, norm)
            for i in range(3))
        self.inject_2x = InputInjection(1)
        self.inject_4x = InputInjection(2)
        self.norm_prelu_0 = _norm_prelu(c0 + in_channels, norm)
        self.level1 = nn.ModuleList(
            ContextGuidedBlock(c0 + in_channels if i == 0 else c1, c1, dilations[0],
                               reductions[0], i == 0, norm) for i in range(num_blocks[0]))
        self.norm_prelu_1 = _norm_prelu(2 * c1 + in_channels, norm)
        self.level2 = nn.ModuleList(
            ContextGuidedBlock(2 * c1 + in_channels if i == 0 else c2, c2, dilations[1],
                               reductions[1], i == 0, norm) for i in range(num_blocks[1]))
        self.norm_prelu_2 = _norm_prelu(2 * c2, norm)
        self._init_weights()
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(
            FEATURES, (c0 + in_channels, 2 * c1 + in_channels, 2 * c2)))
        self._out_feature_strides = dict(zip(FEATURES, (2, 4, 8)))

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.PReLU):
                nn.init.zeros_(m.weight)

    def forward(self, x: torch.Tensor):
        inp_2x, inp_4x = self.inject_2x(x), self.inject_4x(x)
        for layer in self.stem:
            x = layer(x)
        x = stage0 = self.norm_prelu_0(torch.cat([x, inp_2x], 1))
        x = down1 = self.level1[0](x)
        for layer in self.level1[1:]:
            x = layer(x)
        x = stage1 = self.norm_prelu_1(torch.cat([x, down1, inp_4x], 1))
        x = down2 = self.level2[0](x)
        for layer in self.level2[1:]:
            x = layer(x)
        outs = dict(zip(FEATURES, (stage0, stage1, self.norm_prelu_2(torch.cat([down2, x], 1)))))
        return {f: outs[f] for f in self._out_features}


@BACKBONE_REGISTRY.register()
def build_cgnet_backbone(cfg, input_shape: ShapeSpec) -> CGNet:
    """CGNet from MODEL.CGNET (see configs/_base_/models/cgnet.yaml)."""
    c = cfg.MODEL.CGNET
    return CGNet(
        input_shape.channels,
        num_channels=c.NUM_CHANNELS,
        num_blocks=c.NUM_BLOCKS,
        dilations=c.DILATIONS,
        reductions=c.REDUCTIONS,
        norm=norm_with(c.NORM, c.NORM_EPS, c.NORM_MOMENTUM),
        out_features=c.OUT_FEATURES,
    )
