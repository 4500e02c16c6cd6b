"""STDC (mmseg's ``STDCContextPathNet`` over ``STDCNet``, STDC1 / STDC2) as a Detectron2 backbone
with outputs ``detail`` (STDCNet's stage-3 output, stride 8, read by ``STDCHead``'s detail
loss), ``context16`` and ``context8`` (the attention-refined context path at strides 16 and 8)
and ``fusion`` (the feature fusion module, stride 8): mmseg's four outputs, in its order.

Module names and nesting are mmseg's (``backbone.stages.{i}[.{j}.layers.{k}|.downsample]``,
``arms.{i}.conv_layer``/``atten_conv_layer.1``, ``convs``, ``conv_avg``, ``ffm.conv0``/
``ffm.attention.{1,2}``); mmcv's ConvModules are Detectron2 ``Conv2d`` with ``norm``, so an
mmseg checkpoint converts with the generic ConvModule rules (d2seg/checkpoint/mmseg.py) and
mmseg's STDCNet ImageNet weights load under ``backbone.backbone.``.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...config import register_config_keys
from ..layers.conv import conv_norm_act, init_conv_module

__all__ = ["STDCNet", "STDCContextPathNet", "STDCModule", "build_stdc_backbone"]

FEATURES = ("detail", "context16", "context8", "fusion")
# strides of the STDC modules of stages 3, 4, 5 (mmseg's STDCNet.arch_settings)
ARCH_SETTINGS = {
    "STDCNet1": [(2, 1), (2, 1), (2, 1)],
    "STDCNet2": [(2, 1, 1, 1), (2, 1, 1, 1, 1), (2, 1, 1)],
}


@register_config_keys
def add_stdc_keys(keys):
    # mmseg configs/_base_/models/stdc.py (STDC1; STDC2: TYPE "STDCNet2")
    keys.MODEL.STDC = CN()
    keys.MODEL.STDC.TYPE = "STDCNet1"  # mmseg's stdc_type: "STDCNet1" or "STDCNet2"
    keys.MODEL.STDC.CHANNELS = [32, 64, 256, 512, 1024]  # stages 1-5 (strides 2 ... 32)
    keys.MODEL.STDC.BOTTLENECK_TYPE = "cat"  # STDC module fusion: "cat" or "add"
    keys.MODEL.STDC.NUM_CONVS = 4  # convs per STDC module
    keys.MODEL.STDC.WITH_FINAL_CONV = False  # a 1x1 conv on stage 5 (to max(1024, width))
    keys.MODEL.STDC.OUT_CHANNELS = 128  # context path (ARMs) width: context16, context8
    keys.MODEL.STDC.FFM_OUT_CHANNELS = 256  # fusion width
    keys.MODEL.STDC.FFM_SCALE_FACTOR = 4  # fusion attention's reduction
    keys.MODEL.STDC.UPSAMPLE_MODE = "nearest"  # context path upsampling: "nearest" / "bilinear"
    keys.MODEL.STDC.ALIGN_CORNERS = False  # bilinear only (mmseg: None with nearest)
    keys.MODEL.STDC.NORM = "BN"  # mmseg's stdc config uses BN (not SyncBN)
    keys.MODEL.STDC.OUT_FEATURES = list(FEATURES)


def _conv1x1_no_norm(in_channels: int, out_channels: int, activation: bool) -> Conv2d:
    # mmseg's ConvModule(norm_cfg=None, bias=False): conv_norm_act would add a bias
    conv = Conv2d(in_channels, out_channels, 1, bias=False,
                  activation=F.relu if activation else None)
    init_conv_module(conv)
    return conv


class STDCModule(nn.Module):
    """mmseg's ``STDCModule``: a 1x1 conv to width / 2, then ``num_convs - 1`` 3x3 convs halving
    the width, all outputs concatenated (width ``out_channels``). Stride 2 downsamples after
    the first conv with a depthwise 3x3 (``downsample``); ``cat`` replaces the first output by
    its 3x3 average pool, ``add`` adds the (depthwise + 1x1 downsampled) input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm,
                 num_convs: int = 4, fusion_type: str = "cat"):
        super().__init__()
        self.with_downsample = stride == 2
        self.fusion_type = fusion_type
        half = out_channels // 2
        conv_0 = conv_norm_act(in_channels, half, 1, norm=norm)
        self.layers = nn.ModuleList()
        if self.with_downsample:
            self.downsample = conv_norm_act(half, half, 3, norm=norm, stride=2, groups=half,
                                            activation=False)
            if fusion_type == "add":
                # mmseg registers downsample twice (here and as self.downsample): shared weights
                self.layers.append(nn.Sequential(conv_0, self.downsample))
                self.skip = nn.Sequential(
                    conv_norm_act(in_channels, in_channels, 3, norm=norm, stride=2,
                                  groups=in_channels, activation=False),
                    conv_norm_act(in_channels, out_channels, 1, norm=norm, activation=False))
            else:
                self.layers.append(conv_0)
                self.skip = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.layers.append(conv_0)
        for i in range(1, num_convs):
            out_factor = 2 ** (i + 1) if i != num_convs - 1 else 2 ** i
            self.layers.append(conv_norm_act(out_channels // 2 ** i, out_channels // out_factor,
                                             3, norm=norm))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.fusion_type == "add":
            outs, x = [], inputs
            for layer in self.layers:
                x = layer(x)
                outs.append(x)
            if self.with_downsample:
                inputs = self.skip(inputs)
            return torch.cat(outs, dim=1) + inputs
        x0 = self.layers[0](inputs)
        x = self.downsample(x0) if self.with_downsample else x0
        outs = [self.skip(x0) if self.with_downsample else x0]
        for layer in self.layers[1:]:
            x = layer(x)
            outs.append(x)
        return torch.cat(outs, dim=1)


class STDCNet(nn.Module):
    """mmseg's ``STDCNet``: two stride-2 3x3 convs, then three stages of STDC modules; returns
    the outputs of stages 3, 4, 5 (strides 8, 16, 32)."""

    def __init__(self, stdc_type: str, in_channels: int, channels: Sequence[int],
                 bottleneck_type: str, norm, num_convs: int = 4, with_final_conv: bool = False):
        super().__init__()
        if stdc_type not in ARCH_SETTINGS:
            raise ValueError(f"MODEL.STDC.TYPE={stdc_type!r} is not one of {list(ARCH_SETTINGS)}")
        if bottleneck_type not in ("add", "cat"):
            raise ValueError(f"MODEL.STDC.BOTTLENECK_TYPE={bottleneck_type!r} must be 'add' or "
                             "'cat'")
        if len(channels) != 5:
            raise ValueError(f"MODEL.STDC.CHANNELS={list(channels)} needs 5 values")
        if num_convs < 2 or any(c % 2 ** (num_convs - 1) for c in channels[2:]):
            raise ValueError(f"MODEL.STDC.NUM_CONVS={num_convs} must be >= 2, and CHANNELS[2:]="
                             f"{list(channels[2:])} divisible by 2**(NUM_CONVS - 1)")
        self.stages = nn.ModuleList([
            conv_norm_act(in_channels, channels[0], 3, norm=norm, stride=2),
            conv_norm_act(channels[0], channels[1], 3, norm=norm, stride=2),
        ])
        self.num_shallow_features = len(self.stages)  # stages 1, 2: not outputs
        for strides in ARCH_SETTINGS[stdc_type]:
            idx = len(self.stages) - 1
            self.stages.append(nn.Sequential(*[
                STDCModule(channels[idx] if i == 0 else channels[idx + 1], channels[idx + 1],
                           stride, norm, num_convs, bottleneck_type)
                for i, stride in enumerate(strides)
            ]))
        self.with_final_conv = with_final_conv
        if with_final_conv:
            self.final_conv = conv_norm_act(channels[-1], max(1024, channels[-1]), 1, norm=norm)

    def forward(self, x: torch.Tensor):
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        if self.with_final_conv:
            outs[-1] = self.final_conv(outs[-1])
        return outs[self.num_shallow_features:]


class AttentionRefinementModule(nn.Module):
    """mmseg's ``AttentionRefinementModule`` (BiSeNetV1's ARM): 3x3 conv, then scaled by a
    sigmoid channel attention (global pool, 1x1 conv + norm)."""

    def __init__(self, in_channels: int, out_channels: int, norm):
        super().__init__()
        self.conv_layer = conv_norm_act(in_channels, out_channels, 3, norm=norm)
        self.atten_conv_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            conv_norm_act(out_channels, out_channels, 1, norm=norm, activation=False),
            nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_layer(x)
        return x * self.atten_conv_layer(x)


class FeatureFusionModule(nn.Module):
    """STDC's ``FeatureFusionModule`` (not BiSeNetV1's): 1x1 conv on the concatenation, then
    ``x + x * attention(x)`` with a two-conv (no norm, no bias) sigmoid channel attention."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int, norm):
        super().__init__()
        self.conv0 = conv_norm_act(in_channels, out_channels, 1, norm=norm)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            _conv1x1_no_norm(out_channels, out_channels // scale_factor, activation=True),
            _conv1x1_no_norm(out_channels // scale_factor, out_channels, activation=False),
            nn.Sigmoid())

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.conv0(torch.cat([spatial, context], dim=1))
        return x * self.attention(x) + x


class STDCContextPathNet(Backbone):
    """mmseg's ``STDCContextPathNet``: ARMs on stages 5 and 4 with the global context added,
    each upsampled to the next stage's size and refined by a 3x3 conv (``context16``,
    ``context8``), and the FFM of stage 3 with ``context8`` (``fusion``). Convs Kaiming
    (fan_out, ReLU), norms 1/0 from scratch, as mmcv's ConvModule."""

    def __init__(self, in_channels: int = 3, *, stdc_type: str = "STDCNet1",
                 channels=(32, 64, 256, 512, 1024), bottleneck_type: str = "cat",
                 num_convs: int = 4, with_final_conv: bool = False, out_channels: int = 128,
                 ffm_out_channels: int = 256, ffm_scale_factor: int = 4,
                 upsample_mode: str = "nearest", align_corners: bool = False, norm="BN",
                 out_features=FEATURES):
        super().__init__()
        bad = [f for f in out_features if f not in FEATURES]
        if bad or not out_features:
            raise ValueError(f"STDC: OUT_FEATURES {list(out_features)} must be among {FEATURES}")
        if upsample_mode not in ("nearest", "bilinear"):
            raise ValueError(f"MODEL.STDC.UPSAMPLE_MODE={upsample_mode!r} must be 'nearest' or "
                             "'bilinear'")
        if ffm_scale_factor < 1 or ffm_out_channels % ffm_scale_factor:
            raise ValueError(f"MODEL.STDC.FFM_OUT_CHANNELS={ffm_out_channels} must be a multiple"
                             f" of FFM_SCALE_FACTOR={ffm_scale_factor}")
        self.backbone = STDCNet(stdc_type, in_channels, channels, bottleneck_type, norm,
                                num_convs, with_final_conv)
        # mmseg's last_in_channels: the widths of stages 5 and 4
        last = (max(1024, channels[4]) if with_final_conv else channels[4], channels[3])
        self.arms = nn.ModuleList([AttentionRefinementModule(c, out_channels, norm) for c in last])
        self.convs = nn.ModuleList([conv_norm_act(out_channels, out_channels, 3, norm=norm)
                                    for _ in last])
        self.conv_avg = conv_norm_act(last[0], out_channels, 1, norm=norm)
        self.ffm = FeatureFusionModule(channels[2] + out_channels, ffm_out_channels,
                                       ffm_scale_factor, norm)
        self.upsample_mode = upsample_mode
        self.align_corners = align_corners if upsample_mode == "bilinear" else None
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(
            FEATURES, (channels[2], out_channels, out_channels, ffm_out_channels)))
        self._out_feature_strides = dict(zip(FEATURES, (8, 16, 8, 8)))

    def _up(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[2:], mode=self.upsample_mode,
                             align_corners=self.align_corners)

    def forward(self, x: torch.Tensor):
        s8, s16, s32 = self.backbone(x)
        # the global context, at 1x1: upsampling it to stage 5's size is a broadcast
        avg = self.conv_avg(F.adaptive_avg_pool2d(s32, 1))
        context16 = self.convs[0](self._up(self.arms[0](s32) + avg, s16))
        context8 = self.convs[1](self._up(self.arms[1](s16) + context16, s8))
        outs = dict(zip(FEATURES, (s8, context16, context8, self.ffm(s8, context8))))
        return {f: outs[f] for f in self._out_features}


@BACKBONE_REGISTRY.register()
def build_stdc_backbone(cfg, input_shape: ShapeSpec) -> STDCContextPathNet:
    """STDC1 / STDC2 with its context path from MODEL.STDC (configs/_base_/models/stdc.yaml)."""
    c = cfg.MODEL.STDC
    return STDCContextPathNet(
        input_shape.channels,
        stdc_type=c.TYPE,
        channels=c.CHANNELS,
        bottleneck_type=c.BOTTLENECK_TYPE,
        num_convs=c.NUM_CONVS,
        with_final_conv=c.WITH_FINAL_CONV,
        out_channels=c.OUT_CHANNELS,
        ffm_out_channels=c.FFM_OUT_CHANNELS,
        ffm_scale_factor=c.FFM_SCALE_FACTOR,
        upsample_mode=c.UPSAMPLE_MODE,
        align_corners=c.ALIGN_CORNERS,
        norm=c.NORM,
        out_features=c.OUT_FEATURES,
    )
