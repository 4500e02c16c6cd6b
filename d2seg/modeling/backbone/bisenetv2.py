"""BiSeNetV2 (mmseg's ``BiSeNetV2``) as a Detectron2 backbone with outputs ``bga`` (bilateral
guided aggregation, stride 8) and ``stage1``..``stage4`` (the semantic branch's stem and GE
stages, strides 4..32, before the context-embedding block): mmseg's ``out_indices`` (0, .., 4),
which its four auxiliary FCN heads read (``in_index`` 1..4).

Module names and nesting are mmseg's (``detail.detail_branch.{i}.{j}``, ``semantic.stage1``
(stem), ``semantic.stage{2,3,4}.{k}`` (GE layers), ``semantic.stage4_CEBlock``, ``bga``); mmcv's
ConvModules are Detectron2 ``Conv2d`` with ``norm``, so an mmseg checkpoint converts with the
generic ConvModule rules (d2seg/checkpoint/mmseg.py).
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...config import register_config_keys
from ..layers.conv import conv_norm_act
from ..layers.norm import norm_with
from ..layers.separable_conv import DepthwiseSeparableConvModule

__all__ = ["BiSeNetV2", "build_bisenetv2_backbone"]

FEATURES = ("bga", "stage1", "stage2", "stage3", "stage4")


@register_config_keys
def add_bisenetv2_keys(keys):
    # mmseg configs/_base_/models/bisenetv2.py
    keys.MODEL.BISENETV2 = CN()
    keys.MODEL.BISENETV2.DETAIL_CHANNELS = [64, 64, 128]
    keys.MODEL.BISENETV2.SEMANTIC_CHANNELS = [16, 32, 64, 128]  # stem, GE stages 2..4
    keys.MODEL.BISENETV2.SEMANTIC_EXPANSION_RATIO = 6
    keys.MODEL.BISENETV2.BGA_CHANNELS = 128
    # mmseg 0.30 passes its norm_cfg to no sub-module: the backbone always trains with plain BN
    keys.MODEL.BISENETV2.NORM = "BN"
    keys.MODEL.BISENETV2.NORM_EPS = 0.0  # 0 = the norm layer's default
    keys.MODEL.BISENETV2.NORM_MOMENTUM = 0.0  # 0 = the norm layer's default
    keys.MODEL.BISENETV2.ALIGN_CORNERS = False  # the BGA layer's resizes
    keys.MODEL.BISENETV2.OUT_FEATURES = list(FEATURES)


class StemBlock(nn.Module):
    """3x3 s2, then [1x1 -> 3x3 s2 || 3x3 s2 max-pool], concatenated and fused by a 3x3."""

    def __init__(self, in_channels: int, out_channels: int, norm):
        super().__init__()
        self.conv_first = conv_norm_act(in_channels, out_channels, 3, norm=norm, stride=2)
        self.convs = nn.Sequential(
            conv_norm_act(out_channels, out_channels // 2, 1, norm=norm),
            conv_norm_act(out_channels // 2, out_channels, 3, norm=norm, stride=2),
        )
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.fuse_last = conv_norm_act(out_channels * 2, out_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(x)
        return self.fuse_last(torch.cat([self.convs(x), self.pool(x)], dim=1))


class GELayer(nn.Module):
    """Gather-and-expansion layer: 3x3 -> 3x3 grouped conv expanding ``exp_ratio`` times (stride 2
    adds a second, depthwise, 3x3 and a depthwise-separable shortcut) -> 1x1 without ReLU ->
    + shortcut -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, exp_ratio: int, stride: int, norm):
        super().__init__()
        mid = in_channels * exp_ratio
        self.conv1 = conv_norm_act(in_channels, in_channels, 3, norm=norm)
        if stride == 1:
            if in_channels != out_channels:
                raise ValueError(f"BiSeNetV2: a stride-1 GE layer needs equal widths, got "
                                 f"{in_channels} -> {out_channels}")
            self.dwconv = nn.Sequential(
                conv_norm_act(in_channels, mid, 3, norm=norm, groups=in_channels))
            self.shortcut = None
        else:
            self.dwconv = nn.Sequential(
                conv_norm_act(in_channels, mid, 3, norm=norm, stride=stride, groups=in_channels,
                              activation=False),
                conv_norm_act(mid, mid, 3, norm=norm, groups=mid),
            )
            self.shortcut = nn.Sequential(DepthwiseSeparableConvModule(
                in_channels, out_channels, 3, norm=norm, stride=stride, padding=1,
                dw_activation=False, pw_activation=False))
        self.conv2 = nn.Sequential(conv_norm_act(mid, out_channels, 1, norm=norm,
                                                 activation=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv2(self.dwconv(self.conv1(x))) + shortcut)


class CEBlock(nn.Module):
    """Context embedding: global average pool -> BN -> 1x1, added to the input, then a 3x3."""

    def __init__(self, in_channels: int, out_channels: int, norm):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), get_norm(norm, in_channels))
        self.conv_gap = conv_norm_act(in_channels, out_channels, 1, norm=norm)
        self.conv_last = conv_norm_act(out_channels, out_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(x + self.conv_gap(self.gap(x)))


class BGALayer(nn.Module):
    """Bilateral guided aggregation: the detail features (stride s) gated by the upsampled
    semantic features (stride 4s) and vice versa, summed at stride s, then a 3x3 conv."""

    def __init__(self, channels: int, norm, align_corners: bool):
        super().__init__()
        self.align_corners = align_corners

        def sep():  # depthwise conv + norm, pointwise conv (with bias) without norm or ReLU
            return nn.Sequential(DepthwiseSeparableConvModule(
                channels, channels, 3, norm=norm, padding=1, dw_activation=False,
                pw_norm=False, pw_activation=False))

        self.detail_dwconv = sep()
        self.detail_down = nn.Sequential(
            conv_norm_act(channels, channels, 3, norm=norm, stride=2, activation=False),
            nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.semantic_conv = nn.Sequential(
            conv_norm_act(channels, channels, 3, norm=norm, activation=False))
        self.semantic_dwconv = sep()
        self.conv = conv_norm_act(channels, channels, 3, norm=norm)

    def _up(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[2:], mode="bilinear",
                             align_corners=self.align_corners)

    def forward(self, x_d: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
        detail = self.detail_dwconv(x_d)
        fuse_1 = detail * torch.sigmoid(self._up(self.semantic_conv(x_s), detail))
        fuse_2 = self.detail_down(x_d) * torch.sigmoid(self.semantic_dwconv(x_s))
        return self.conv(fuse_1 + self._up(fuse_2, fuse_1))


class BiSeNetV2(Backbone):
    """mmseg's BiSeNetV2; convs Kaiming (fan_out, ReLU), zero biases and norms 1/0 from scratch,
    as mmseg's default ``init_cfg`` (conv_norm_act's init)."""

    def __init__(self, in_channels: int = 3, *, detail_channels=(64, 64, 128),
                 semantic_channels=(16, 32, 64, 128), semantic_expansion_ratio: int = 6,
                 bga_channels: int = 128, norm="BN", align_corners: bool = False,
                 out_features=FEATURES):
        super().__init__()
        detail_channels, semantic_channels = list(detail_channels), list(semantic_channels)
        names = ("bga",) + tuple(f"stage{i + 1}" for i in range(len(semantic_channels)))
        bad = [f for f in out_features if f not in names]
        if bad or not out_features:
            raise ValueError(f"BiSeNetV2: OUT_FEATURES {list(out_features)} must be among {names}")
        # the BGA multiplies the detail features (stride 2^n) downsampled 4x with the last
        # semantic ones (stride 4 * 2^(m-1)) for n detail and m semantic stages: n = m - 1
        if len(semantic_channels) < 2 or len(detail_channels) != len(semantic_channels) - 1:
            raise ValueError(
                f"BiSeNetV2: DETAIL_CHANNELS={detail_channels} needs one value fewer than "
                f"SEMANTIC_CHANNELS={semantic_channels} (at least 2 values)")
        if detail_channels[-1] != bga_channels or semantic_channels[-1] != bga_channels:
            raise ValueError(
                f"BiSeNetV2: the last DETAIL_CHANNELS ({detail_channels[-1]}) and "
                f"SEMANTIC_CHANNELS ({semantic_channels[-1]}) must equal BGA_CHANNELS "
                f"({bga_channels})")
        self.detail = nn.Module()
        widths = [in_channels, *detail_channels]
        self.detail.detail_branch = nn.ModuleList([
            nn.Sequential(
                conv_norm_act(widths[i], widths[i + 1], 3, norm=norm, stride=2),
                *[conv_norm_act(widths[i + 1], widths[i + 1], 3, norm=norm)
                  for _ in range(1 if i == 0 else 2)])
            for i in range(len(detail_channels))
        ])
        self.semantic = nn.Module()
        self.semantic.stage1 = StemBlock(in_channels, semantic_channels[0], norm)
        last = len(semantic_channels) - 1
        for i in range(1, len(semantic_channels)):
            cin, cout = semantic_channels[i - 1], semantic_channels[i]
            layers = [GELayer(cin, cout, semantic_expansion_ratio, 2, norm)]
            layers += [GELayer(cout, cout, semantic_expansion_ratio, 1, norm)
                       for _ in range(3 if i == last else 1)]
            self.semantic.add_module(f"stage{i + 1}", nn.Sequential(*layers))
        self.semantic.add_module(f"stage{last + 1}_CEBlock",
                                 CEBlock(semantic_channels[-1], semantic_channels[-1], norm))
        # semantic stages in order, the CE block last (mmseg's semantic_stages)
        self._semantic_stages = [f"stage{i + 1}" for i in range(last + 1)] + [
            f"stage{last + 1}_CEBlock"]
        self.bga = BGALayer(bga_channels, norm, align_corners)
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(names, (bga_channels, *semantic_channels)))
        self._out_feature_strides = dict(zip(
            names, (2 ** len(detail_channels), *[4 * 2 ** i for i in range(last + 1)])))

    def forward(self, x: torch.Tensor):
        x_detail = x
        for stage in self.detail.detail_branch:
            x_detail = stage(x_detail)
        semantic = []
        for name in self._semantic_stages:
            x = getattr(self.semantic, name)(x)
            semantic.append(x)
        # mmseg's outputs: the BGA of the detail and CE features, then the stages before CE
        outs = dict(zip(self._out_feature_channels, [self.bga(x_detail, x), *semantic[:-1]]))
        return {f: outs[f] for f in self._out_features}


@BACKBONE_REGISTRY.register()
def build_bisenetv2_backbone(cfg, input_shape: ShapeSpec) -> BiSeNetV2:
    """BiSeNetV2 from MODEL.BISENETV2 (see configs/_base_/models/bisenetv2.yaml)."""
    c = cfg.MODEL.BISENETV2
    return BiSeNetV2(
        input_shape.channels,
        detail_channels=c.DETAIL_CHANNELS,
        semantic_channels=c.SEMANTIC_CHANNELS,
        semantic_expansion_ratio=c.SEMANTIC_EXPANSION_RATIO,
        bga_channels=c.BGA_CHANNELS,
        norm=norm_with(c.NORM, c.NORM_EPS, c.NORM_MOMENTUM),
        align_corners=c.ALIGN_CORNERS,
        out_features=c.OUT_FEATURES,
    )
