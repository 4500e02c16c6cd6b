"""Fast-SCNN (mmseg's ``FastSCNN``) as a Detectron2 backbone with outputs ``higher_res``
(learning to downsample, stride 8), ``lower_res`` (global feature extractor, stride 32) and
``fusion`` (feature fusion, stride 8): mmseg's ``out_indices`` (0, 1, 2).

Module names and nesting are mmseg's (``learning_to_downsample``, ``global_feature_extractor``
with ``bottleneck{1,2,3}.{i}.conv.{j}``, ``ppm``, ``out``; ``feature_fusion``); mmcv's
ConvModules are Detectron2 ``Conv2d`` with ``norm``, so an mmseg checkpoint converts with the
generic ConvModule rules (d2seg/checkpoint/mmseg.py).
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...config import register_config_keys
from ..layers.conv import conv_norm_act
from ..layers.norm import norm_with
from ..layers.ppm import PPM
from ..layers.separable_conv import DepthwiseSeparableConvModule

__all__ = ["FastSCNN", "InvertedResidual", "build_fast_scnn_backbone"]

FEATURES = ("higher_res", "lower_res", "fusion")


@register_config_keys
def add_fast_scnn_keys(keys):
    # mmseg configs/_base_/models/fast_scnn.py
    keys.MODEL.FAST_SCNN = CN()
    keys.MODEL.FAST_SCNN.DOWNSAMPLE_DW_CHANNELS = [32, 48]  # learning to downsample
    keys.MODEL.FAST_SCNN.GLOBAL_IN_CHANNELS = 64  # learning to downsample's output (higher_res)
    keys.MODEL.FAST_SCNN.GLOBAL_BLOCK_CHANNELS = [64, 96, 128]  # inverted-residual groups
    keys.MODEL.FAST_SCNN.GLOBAL_BLOCK_STRIDES = [2, 2, 1]
    keys.MODEL.FAST_SCNN.GLOBAL_OUT_CHANNELS = 128  # lower_res
    keys.MODEL.FAST_SCNN.FUSION_OUT_CHANNELS = 128  # fusion
    keys.MODEL.FAST_SCNN.NORM = "SyncBN"
    keys.MODEL.FAST_SCNN.NORM_EPS = 0.0  # 0 = the norm layer's default
    keys.MODEL.FAST_SCNN.NORM_MOMENTUM = 0.01  # mmseg's norm_cfg momentum (0 = default 0.1)
    keys.MODEL.FAST_SCNN.ALIGN_CORNERS = False
    keys.MODEL.FAST_SCNN.OUT_FEATURES = list(FEATURES)


class InvertedResidual(nn.Module):
    """MobileNetV2 block (mmseg's ``InvertedResidual``): 1x1 expand, 3x3 depthwise, 1x1 linear,
    each conv-norm(-act) in ``conv``; residual when the stride is 1 and the widths agree."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int,
                 norm, dilation: int = 1):
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        hidden = int(round(in_channels * expand_ratio))
        layers = [conv_norm_act(in_channels, hidden, 1, norm=norm)] if expand_ratio != 1 else []
        layers += [
            conv_norm_act(hidden, hidden, 3, norm=norm, stride=stride, dilation=dilation,
                          groups=hidden),
            conv_norm_act(hidden, out_channels, 1, norm=norm, activation=False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class LearningToDownsample(nn.Module):
    """3x3 s2 conv, then two s2 depthwise-separable convs without the depthwise ReLU."""

    def __init__(self, in_channels: int, dw_channels: Sequence[int], out_channels: int, norm):
        super().__init__()
        self.conv = conv_norm_act(in_channels, dw_channels[0], 3, norm=norm, stride=2)
        self.dsconv1 = DepthwiseSeparableConvModule(
            dw_channels[0], dw_channels[1], 3, norm=norm, stride=2, padding=1, dw_activation=False)
        self.dsconv2 = DepthwiseSeparableConvModule(
            dw_channels[1], out_channels, 3, norm=norm, stride=2, padding=1, dw_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dsconv2(self.dsconv1(self.conv(x)))


class GlobalFeatureExtractor(nn.Module):
    """Three groups of inverted residuals (expansion 6, 3 blocks each), PPM (1, 2, 3, 6) with
    width / 4 branches, concatenated with its input and fused by a 3x3 conv."""

    def __init__(self, in_channels: int, block_channels: Sequence[int], out_channels: int,
                 strides: Sequence[int], norm, align_corners: bool,
                 num_blocks=(3, 3, 3), expand_ratio: int = 6, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        if not (len(block_channels) == len(strides) == len(num_blocks) == 3):
            raise ValueError(f"FastSCNN: GLOBAL_BLOCK_CHANNELS={list(block_channels)} and "
                             f"GLOBAL_BLOCK_STRIDES={list(strides)} need 3 values each")
        widths = [in_channels, *block_channels]
        for i in range(3):
            self.add_module(f"bottleneck{i + 1}", nn.Sequential(*[
                InvertedResidual(widths[i] if b == 0 else widths[i + 1], widths[i + 1],
                                 strides[i] if b == 0 else 1, expand_ratio, norm)
                for b in range(num_blocks[i])
            ]))
        self.ppm = PPM(pool_scales, block_channels[2], block_channels[2] // 4, norm=norm,
                       align_corners=align_corners)
        # mmseg sizes this conv's input as 2 x the width: PPM's 4 branches of width / 4 + input
        self.out = conv_norm_act(block_channels[2] * 2, out_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck3(self.bottleneck2(self.bottleneck1(x)))
        return self.out(torch.cat([x, *self.ppm(x)], dim=1))


class FeatureFusionModule(nn.Module):
    """Lower branch upsampled to the higher one -> 3x3 grouped conv (``groups=out_channels``,
    as mmseg's ``dwconv``) -> 1x1 without ReLU; plus the higher branch's 1x1 without ReLU; ReLU."""

    def __init__(self, higher_in_channels: int, lower_in_channels: int, out_channels: int,
                 norm, align_corners: bool):
        super().__init__()
        if lower_in_channels % out_channels:
            raise ValueError(f"FastSCNN: GLOBAL_OUT_CHANNELS={lower_in_channels} must be a "
                             f"multiple of FUSION_OUT_CHANNELS={out_channels} (grouped dwconv)")
        self.align_corners = align_corners
        self.dwconv = conv_norm_act(lower_in_channels, out_channels, 3, norm=norm,
                                    groups=out_channels)
        self.conv_lower_res = conv_norm_act(out_channels, out_channels, 1, norm=norm,
                                            activation=False)
        self.conv_higher_res = conv_norm_act(higher_in_channels, out_channels, 1, norm=norm,
                                             activation=False)

    def forward(self, higher: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
        lower = F.interpolate(lower, size=higher.shape[2:], mode="bilinear",
                              align_corners=self.align_corners)
        lower = self.conv_lower_res(self.dwconv(lower))
        return F.relu(self.conv_higher_res(higher) + lower)


class FastSCNN(Backbone):
    """mmseg's FastSCNN; convs Kaiming (fan_out, ReLU) and norms 1/0 from scratch, as mmseg's
    default ``init_cfg`` (conv_norm_act's init)."""

    def __init__(self, in_channels: int = 3, *, downsample_dw_channels=(32, 48),
                 global_in_channels: int = 64, global_block_channels=(64, 96, 128),
                 global_block_strides=(2, 2, 1), global_out_channels: int = 128,
                 fusion_out_channels: int = 128, norm="BN", align_corners: bool = False,
                 out_features=FEATURES):
        super().__init__()
        bad = [f for f in out_features if f not in FEATURES]
        if bad or not out_features:
            raise ValueError(f"FastSCNN: OUT_FEATURES {list(out_features)} must be among "
                             f"{FEATURES}")
        if len(downsample_dw_channels) != 2:
            raise ValueError(f"FastSCNN: DOWNSAMPLE_DW_CHANNELS={list(downsample_dw_channels)} "
                             "needs 2 values")
        self.learning_to_downsample = LearningToDownsample(
            in_channels, downsample_dw_channels, global_in_channels, norm)
        self.global_feature_extractor = GlobalFeatureExtractor(
            global_in_channels, global_block_channels, global_out_channels,
            global_block_strides, norm, align_corners)
        self.feature_fusion = FeatureFusionModule(
            global_in_channels, global_out_channels, fusion_out_channels, norm, align_corners)
        lower_stride = 8
        for s in global_block_strides:
            lower_stride *= s
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(
            FEATURES, (global_in_channels, global_out_channels, fusion_out_channels)))
        self._out_feature_strides = dict(zip(FEATURES, (8, lower_stride, 8)))

    def forward(self, x: torch.Tensor):
        higher = self.learning_to_downsample(x)
        lower = self.global_feature_extractor(higher)
        outs = dict(zip(FEATURES, (higher, lower, self.feature_fusion(higher, lower))))
        return {f: outs[f] for f in self._out_features}


@BACKBONE_REGISTRY.register()
def build_fast_scnn_backbone(cfg, input_shape: ShapeSpec) -> FastSCNN:
    """Fast-SCNN from MODEL.FAST_SCNN (see configs/_base_/models/fast_scnn.yaml)."""
    c = cfg.MODEL.FAST_SCNN
    return FastSCNN(
        input_shape.channels,
        downsample_dw_channels=c.DOWNSAMPLE_DW_CHANNELS,
        global_in_channels=c.GLOBAL_IN_CHANNELS,
        global_block_channels=c.GLOBAL_BLOCK_CHANNELS,
        global_block_strides=c.GLOBAL_BLOCK_STRIDES,
        global_out_channels=c.GLOBAL_OUT_CHANNELS,
        fusion_out_channels=c.FUSION_OUT_CHANNELS,
        norm=norm_with(c.NORM, c.NORM_EPS, c.NORM_MOMENTUM),
        align_corners=c.ALIGN_CORNERS,
        out_features=c.OUT_FEATURES,
    )
