"""BiSeNetV1 (mmseg's ``BiSeNetV1``) as a Detectron2 backbone with outputs ``fusion`` (the
feature fusion module, stride 8), ``context8`` and ``context16`` (the context path's refined
features at strides 8 and 16): mmseg's outputs (x_fuse, x_context8, x_context16), in its order,
which its decode head (``in_index`` 0) and two auxiliary FCN heads (1, 2) read.

Module names and nesting are mmseg's (``spatial_path.layer{1-4}``, ``context_path.backbone``,
``context_path.arm{16,32}``, ``context_path.conv_head{32,16}``, ``context_path.gap_conv.1``,
``ffm.conv1``, ``ffm.conv_atten.0``). The context path's network is d2seg's ResNet from
``MODEL.RESNETS`` (mmseg's plain ``ResNet``: 7x7 stem, strides 1,2,2,2, no dilation), under
Detectron2's names; mmseg's ResNet keys under ``backbone.context_path.backbone.`` are converted
as a top-level ResNet's (registered below), the rest with the generic ConvModule rules.

mmseg 0.30 passes ``norm_cfg`` to none of the BiSeNetV1 sub-modules: they use plain BN
(``MODEL.BISENETV1.NORM``), only the ResNet uses the config's norm (``MODEL.RESNETS.NORM``).
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...checkpoint.catalog import register_imagenet_weights_rule
from ...checkpoint.mmseg import register_nested_resnet
from ...config import register_config_keys
from ..layers.conv import conv_norm_act
from .resnet import build_dilated_resnet_backbone, resnet_imagenet_weights
from .stdc import AttentionRefinementModule

__all__ = ["BiSeNetV1", "SpatialPath", "ContextPath", "FeatureFusionModule",
           "build_bisenetv1_backbone"]

FEATURES = ("fusion", "context8", "context16")
CONTEXT_RESNET = "backbone.context_path.backbone."  # the ResNet's keys in the model
# the ImageNet ResNet layouts (d2seg/checkpoint/backbones.py) that fit the context path
RESNET_FORMATS = ("resnet_v1c", "resnet", "detectron2_resnet")

register_nested_resnet(CONTEXT_RESNET)


@register_imagenet_weights_rule("build_bisenetv1_backbone")
def bisenetv1_imagenet_weights(cfg) -> Optional[str]:
    """mmseg's in1k-pre configs load ResNetV1c weights into the context path's 7x7-stem ResNet (its
    stages; the deep stem's keys are skipped), whatever stem MODEL.RESNETS names."""
    if resnet_imagenet_weights(cfg) is None:  # not mmseg's widths
        return None
    return f"open-mmlab://resnet{cfg.MODEL.RESNETS.DEPTH}_v1c"


@register_config_keys
def add_bisenetv1_keys(keys):
    # mmseg configs/_base_/models/bisenetv1_r18-d32.py (R-18; R-50/101: see the yaml)
    keys.MODEL.BISENETV1 = CN()
    keys.MODEL.BISENETV1.SPATIAL_CHANNELS = [64, 64, 64, 128]  # 7x7/2, 3x3/2, 3x3/2, 1x1
    # ARM / context width, then the ResNet's res4 and res5 widths (mmseg's context_channels)
    keys.MODEL.BISENETV1.CONTEXT_CHANNELS = [128, 256, 512]
    keys.MODEL.BISENETV1.OUT_CHANNELS = 256  # fusion width
    # mmseg 0.30 passes its norm_cfg to no sub-module: they always train with plain BN
    keys.MODEL.BISENETV1.NORM = "BN"
    keys.MODEL.BISENETV1.OUT_FEATURES = list(FEATURES)


class SpatialPath(nn.Module):
    """7x7/2 -> 3x3/2 -> 3x3/2 -> 1x1 (stride 8), conv + norm + ReLU each."""

    def __init__(self, in_channels: int, channels, norm):
        super().__init__()
        kernels_strides = ((7, 2), (3, 2), (3, 2), (1, 1))
        for i, (c, (k, s)) in enumerate(zip(channels, kernels_strides)):
            cin = in_channels if i == 0 else channels[i - 1]
            self.add_module(f"layer{i + 1}", conv_norm_act(cin, c, k, norm=norm, stride=s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x


class ContextPath(nn.Module):
    """ARMs on res5 and res4 with res5's global context added, each upsampled (nearest, as
    mmseg) to the next stage's size and refined by a 3x3 conv: (context8, context16)."""

    def __init__(self, resnet: Backbone, context_channels, norm):
        super().__init__()
        c0, c16, c32 = context_channels
        self.backbone = resnet
        self.arm16 = AttentionRefinementModule(c16, c0, norm)
        self.arm32 = AttentionRefinementModule(c32, c0, norm)
        self.conv_head32 = conv_norm_act(c0, c0, 3, norm=norm)
        self.conv_head16 = conv_norm_act(c0, c0, 3, norm=norm)
        self.gap_conv = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)),
                                      conv_norm_act(c32, c0, 1, norm=norm))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        x_8, x_16, x_32 = feats["res3"], feats["res4"], feats["res5"]
        # the 1x1 global context broadcasts over res5's size (mmseg adds it the same way)
        x_32_up = self.conv_head32(F.interpolate(self.arm32(x_32) + self.gap_conv(x_32),
                                                 size=x_16.shape[2:], mode="nearest"))
        x_16_up = self.conv_head16(F.interpolate(self.arm16(x_16) + x_32_up,
                                                 size=x_8.shape[2:], mode="nearest"))
        return x_16_up, x_32_up


class FeatureFusionModule(nn.Module):
    """BiSeNetV1's FFM (not STDC's): 1x1 conv on the concatenation, then ``x + x * a`` with a
    one-conv (conv + norm + ReLU, no bias) sigmoid channel attention ``a``."""

    def __init__(self, in_channels: int, out_channels: int, norm):
        super().__init__()
        self.conv1 = conv_norm_act(in_channels, out_channels, 1, norm=norm)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.conv_atten = nn.Sequential(conv_norm_act(out_channels, out_channels, 1, norm=norm),
                                        nn.Sigmoid())

    def forward(self, x_sp: torch.Tensor, x_cp: torch.Tensor) -> torch.Tensor:
        x = self.conv1(torch.cat([x_sp, x_cp], dim=1))
        return x * self.conv_atten(self.gap(x)) + x


class BiSeNetV1(Backbone):
    """mmseg's ``BiSeNetV1``: spatial path (stride 8) and context path (a ResNet with ARMs),
    fused by the FFM. Its convs Kaiming (fan_out, ReLU), norms 1/0 from scratch, as mmcv's
    ConvModule; the ResNet as mmseg's (init_like_mmseg)."""

    def __init__(self, resnet: Backbone, in_channels: int = 3, *,
                 spatial_channels=(64, 64, 64, 128), context_channels=(128, 256, 512),
                 out_channels: int = 256, norm="BN", out_features=FEATURES):
        super().__init__()
        bad = [f for f in out_features if f not in FEATURES]
        if bad or not out_features:
            raise ValueError(f"MODEL.BISENETV1.OUT_FEATURES={list(out_features)} must be among "
                             f"{list(FEATURES)}")
        if len(spatial_channels) != 4:
            raise ValueError(f"MODEL.BISENETV1.SPATIAL_CHANNELS={list(spatial_channels)} needs 4 "
                             "values")
        if len(context_channels) != 3:
            raise ValueError(f"MODEL.BISENETV1.CONTEXT_CHANNELS={list(context_channels)} needs 3 "
                             "values")
        shapes = resnet.output_shape()
        missing = [f for f in ("res3", "res4", "res5") if f not in shapes]
        if missing:
            raise ValueError(f"MODEL.RESNETS.OUT_FEATURES={list(shapes)} lacks {missing}: "
                             "BiSeNetV1's context path reads res3, res4 and res5")
        widths = [shapes["res4"].channels, shapes["res5"].channels]
        if list(context_channels[1:]) != widths:
            raise ValueError(
                f"MODEL.BISENETV1.CONTEXT_CHANNELS={list(context_channels)}: its last two values "
                f"must be the ResNet's res4 and res5 widths {widths} (MODEL.RESNETS.DEPTH / "
                "RES2_OUT_CHANNELS)")
        strides = [shapes[f].stride for f in ("res3", "res4", "res5")]
        if strides != [8, 16, 32]:
            raise ValueError(f"BiSeNetV1's ResNet has strides {strides} at res3..res5, expected "
                             "[8, 16, 32] (MODEL.RESNETS.STAGE_STRIDES [1, 2, 2, 2])")
        # mmseg builds the FFM for context_channels[1] inputs: the concatenation must be that wide
        if spatial_channels[-1] + context_channels[0] != context_channels[1]:
            raise ValueError(
                f"MODEL.BISENETV1: SPATIAL_CHANNELS[-1] + CONTEXT_CHANNELS[0] = "
                f"{spatial_channels[-1]} + {context_channels[0]} must equal CONTEXT_CHANNELS[1] = "
                f"{context_channels[1]} (the fusion module's input width, as in mmseg)")
        self.context_path = ContextPath(resnet, context_channels, norm)
        self.spatial_path = SpatialPath(in_channels, spatial_channels, norm)
        self.ffm = FeatureFusionModule(context_channels[1], out_channels, norm)
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(FEATURES, (out_channels, context_channels[0],
                                                         context_channels[0])))
        self._out_feature_strides = dict(zip(FEATURES, (8, 8, 16)))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        context8, context16 = self.context_path(x)
        outs = dict(zip(FEATURES, (self.ffm(self.spatial_path(x), context8), context8,
                                   context16)))
        return {f: outs[f] for f in self._out_features}

    def adapt_imagenet_weights(self, sd: Dict[str, torch.Tensor], fmt: str
                               ) -> Tuple[Dict[str, torch.Tensor], List[str], Tuple[str, ...]]:
        """ImageNet ResNet weights (converted to ``backbone.{stem,resN}.*``) -> the context
        path's ResNet, as mmseg's ``Pretrained`` init of its ``backbone_cfg`` (strict=False): the
        stages load; the stem only when the file's stem is the model's (a ResNetV1c file's deep
        stem ``stem.{0,1,...}`` matches no key of a plain ResNet's ``conv1``/``bn1``): otherwise
        its keys are skipped and the stem keeps PyTorch's default init, as in mmseg, whose
        Pretrained init skips the ResNet's Kaiming init. Returns (model keys, skipped source
        keys, the model prefixes the weights fill)."""
        if fmt.split(":")[-1] not in RESNET_FORMATS:
            raise ValueError(f"BiSeNetV1's context path is a ResNet: ImageNet weights in the "
                             f"{fmt!r} layout do not fit it (a ResNet file: "
                             f"{', '.join(RESNET_FORMATS)})")
        out = {CONTEXT_RESNET + k[len("backbone."):]: v for k, v in sd.items()}
        resnet = self.context_path.backbone
        stem = {k: v.shape for k, v in out.items() if k.startswith(CONTEXT_RESNET + "stem.")
                and not k.endswith("num_batches_tracked")}
        model_stem = {f"{CONTEXT_RESNET}stem.{k}": v.shape
                      for k, v in resnet.stem.state_dict().items()
                      if not k.endswith("num_batches_tracked")}
        if stem == model_stem:
            return out, [], (CONTEXT_RESNET,)
        skipped = sorted(k for k in sd if k.startswith("backbone.stem."))
        for m in resnet.stem.modules():
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
                m.reset_parameters()
        out = {k: v for k, v in out.items() if not k.startswith(CONTEXT_RESNET + "stem.")}
        return out, skipped, (CONTEXT_RESNET + "res",)


@BACKBONE_REGISTRY.register()
def build_bisenetv1_backbone(cfg, input_shape: ShapeSpec) -> BiSeNetV1:
    """BiSeNetV1 from MODEL.BISENETV1, its context path's ResNet from MODEL.RESNETS
    (configs/_base_/models/bisenetv1_r18-d32.yaml)."""
    c = cfg.MODEL.BISENETV1
    return BiSeNetV1(
        build_dilated_resnet_backbone(cfg, input_shape),
        input_shape.channels,
        spatial_channels=c.SPATIAL_CHANNELS,
        context_channels=c.CONTEXT_CHANNELS,
        out_channels=c.OUT_CHANNELS,
        norm=c.NORM,
        out_features=c.OUT_FEATURES,
    )
