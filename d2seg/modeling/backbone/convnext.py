"""ConvNeXt (mmcls 0.25's ``ConvNeXt``, which mmseg's ConvNeXt configs use through
``custom_imports='mmcls.models'``) as a Detectron2 backbone with outputs ``convnext1``..
``convnext4`` (strides 4, 8, 16, 32 with the default stem).

Module names and nesting are mmcls's, so mmseg's UPerNet-ConvNeXt checkpoints and mmcls's ImageNet
checkpoints (``backbone.*``) load unchanged: ``downsample_layers.0`` = the stem (4x4/4 conv, LN),
``downsample_layers.{1,2,3}`` = (LN, 2x2/2 conv); ``stages.{i}.{j}`` the blocks with
``depthwise_conv``, ``norm``, ``pointwise_conv1``, ``pointwise_conv2`` and the layer scale
``gamma``; ``norm{i}`` the LayerNorm of each output stage.

Behaviour kept from mmcls:
- the stem and downsample convs have no padding: odd sizes floor (375 x 500 -> 93 x 125 at 1/4);
- LayerNorm eps 1e-6 in the stem, the blocks and the out-norms, but 1e-5 (LayerNorm2d's default)
  in the three downsample layers;
- stochastic depth linear from 0 to DROP_PATH_RATE over all blocks; ``gamma`` starts at
  LAYER_SCALE_INIT_VALUE (mmseg's configs: 1.0), and is absent when that is 0;
- outputs go through their ``norm{i}`` per pixel (``gap_before_final_norm=False``, as every mmseg
  config sets it; the pooled classifier output is not offered);
- without a checkpoint every module keeps PyTorch's default init (mmcls's ConvNeXt has no
  ``init_weights`` of its own).
"""
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...checkpoint.backbones import WeightFormat, register_weight_format
from ...config import register_config_keys
from ...export.tracing import is_exporting
from .mit import DropPath

__all__ = ["ConvNeXt", "LayerNorm2d", "build_convnext_backbone"]

BLOCK_LN_EPS = 1e-6  # mmcls's norm_cfg=dict(type='LN2d', eps=1e-6): stem, blocks, out-norms
DOWNSAMPLE_LN_EPS = 1e-5  # the downsample layers' LayerNorm2d is built without norm_cfg


@register_config_keys
def add_convnext_keys(keys):
    keys.MODEL.CONVNEXT = CN()
    # mmcls's arch: T [3,3,9,3] / [96,192,384,768]; S [3,3,27,3] / [96,192,384,768];
    # B [3,3,27,3] / [128,256,512,1024]; L [3,3,27,3] / [192,384,768,1536];
    # XL [3,3,27,3] / [256,512,1024,2048]
    keys.MODEL.CONVNEXT.DEPTHS = [3, 3, 9, 3]
    keys.MODEL.CONVNEXT.CHANNELS = [96, 192, 384, 768]
    keys.MODEL.CONVNEXT.STEM_PATCH_SIZE = 4  # the stem's kernel and stride
    keys.MODEL.CONVNEXT.LINEAR_PW_CONV = True  # pointwise convs as Linear (mmcls's default)
    keys.MODEL.CONVNEXT.DROP_PATH_RATE = 0.0  # linear from 0 over all blocks (mmseg: 0.4, S 0.3)
    keys.MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE = 1e-6  # gamma's init; 0 = no gamma (mmseg: 1.0)
    keys.MODEL.CONVNEXT.FROZEN_STAGES = 0  # stem + stages before this index: frozen, eval mode
    keys.MODEL.CONVNEXT.WITH_CP = False  # activation checkpointing of each block while training
    keys.MODEL.CONVNEXT.OUT_FEATURES = ["convnext1", "convnext2", "convnext3", "convnext4"]


class LayerNorm2d(nn.LayerNorm):
    """mmcls's ``LayerNorm2d``: LayerNorm over the channels of an N x C x H x W map."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        # a channels-last view (no copy): the next conv keeps that format, and so does the stage
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> LN -> pointwise 4x -> GELU -> pointwise -> * gamma -> DropPath,
    plus the identity."""

    def __init__(self, channels: int, drop_path_rate: float, layer_scale_init_value: float,
                 linear_pw_conv: bool = True, with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.linear_pw_conv = linear_pw_conv
        self.depthwise_conv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = LayerNorm2d(channels, eps=BLOCK_LN_EPS)
        pw_conv = nn.Linear if linear_pw_conv else partial(nn.Conv2d, kernel_size=1)
        self.pointwise_conv1 = pw_conv(channels, 4 * channels)
        self.act = nn.GELU()
        self.pointwise_conv2 = pw_conv(4 * channels, channels)
        self.gamma = (nn.Parameter(torch.full((channels,), float(layer_scale_init_value)))
                      if layer_scale_init_value > 0 else None)
        self.drop_path = DropPath(drop_path_rate)

    def _forward(self, x):
        if not self.linear_pw_conv:
            y = self.pointwise_conv2(self.act(self.pointwise_conv1(
                self.norm(self.depthwise_conv(x)))))
            if self.gamma is not None:
                y = y * self.gamma.view(1, -1, 1, 1)
            return x + self.drop_path(y)
        # N x H x W x C for LN and the Linears: with a channels-last x (the stages run in that
        # format) every step reads and writes contiguous memory, no transposing copy
        y = self.depthwise_conv(x).permute(0, 2, 3, 1)
        n = self.norm
        y = self.pointwise_conv2(self.act(self.pointwise_conv1(
            F.layer_norm(y, n.normalized_shape, n.weight, n.bias, n.eps))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))

    def forward(self, x):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


def _positive_ints(key: str, values) -> list:
    values = list(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"MODEL.CONVNEXT.{key}={values}: expected a list of integers >= 1")
    return values


class ConvNeXt(Backbone):
    """Stem, then per stage: a downsample layer (but for stage 0) and ConvNeXt blocks; each
    output stage's map goes through its own LayerNorm ``norm{i}``."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        depths: Sequence[int] = (3, 3, 9, 3),
        channels: Sequence[int] = (96, 192, 384, 768),
        stem_patch_size: int = 4,
        linear_pw_conv: bool = True,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        frozen_stages: int = 0,
        with_cp: bool = False,
        out_features: Sequence[str] = ("convnext1", "convnext2", "convnext3", "convnext4"),
    ):
        super().__init__()
        depths = _positive_ints("DEPTHS", depths)
        channels = _positive_ints("CHANNELS", channels)
        if len(depths) != len(channels):
            raise ValueError(f"MODEL.CONVNEXT: DEPTHS {depths} and CHANNELS {channels} need one "
                             "value per stage each")
        _positive_ints("STEM_PATCH_SIZE", [stem_patch_size])
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"MODEL.CONVNEXT.DROP_PATH_RATE={drop_path_rate}: expected [0, 1)")
        if layer_scale_init_value < 0:
            raise ValueError(f"MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE={layer_scale_init_value}: "
                             "expected >= 0 (0 = no layer scale)")
        if not 0 <= frozen_stages <= len(depths):
            raise ValueError(f"MODEL.CONVNEXT.FROZEN_STAGES={frozen_stages}: expected 0.."
                             f"{len(depths)} (the number of stages)")
        names = [f"convnext{i + 1}" for i in range(len(depths))]
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(f"MODEL.CONVNEXT.OUT_FEATURES {list(out_features)}: "
                             f"{unknown or 'none'} not among {names}")
        self.frozen_stages = frozen_stages
        # CPU: the values are read back (a model built on the meta device gets them too)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_channels, channels[0], stem_patch_size, stem_patch_size),
            LayerNorm2d(channels[0], eps=BLOCK_LN_EPS))])
        self.stages = nn.ModuleList()
        self._out_feature_channels, self._out_feature_strides = {}, {}
        for i, depth in enumerate(depths):
            if i > 0:
                self.downsample_layers.append(nn.Sequential(
                    LayerNorm2d(channels[i - 1], eps=DOWNSAMPLE_LN_EPS),
                    nn.Conv2d(channels[i - 1], channels[i], 2, 2)))
            first = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                ConvNeXtBlock(channels[i], dpr[first + j], layer_scale_init_value,
                              linear_pw_conv, with_cp) for j in range(depth)]))
            self._out_feature_channels[names[i]] = channels[i]
            self._out_feature_strides[names[i]] = stem_patch_size * 2 ** i
        self._out_features = [f for f in names if f in out_features]
        for f in self._out_features:  # mmcls's per-output norms, named by stage index
            i = names.index(f)
            self.add_module(f"norm{i}", LayerNorm2d(channels[i], eps=BLOCK_LN_EPS))
        # the last stage that is an output: later ones are built (checkpoint keys) but not run
        self._num_run = max(names.index(f) for f in self._out_features) + 1
        self._freeze_stages()

    def _freeze_stages(self):
        for i in range(self.frozen_stages):
            for m in (self.downsample_layers[i], self.stages[i]):
                m.eval()  # (no stochastic depth in a frozen stage, as mmcls)
                for p in m.parameters():
                    p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x):
        # every stage's conv needs at least one output pixel (no padding anywhere)
        need = self._out_feature_strides[f"convnext{self._num_run}"]
        if not is_exporting() and min(x.shape[-2:]) < need:
            raise ValueError(f"ConvNeXt input {tuple(x.shape[-2:])} is smaller than {need} px: "
                             f"stage {self._num_run} (stride {need}) would be empty")
        outs = {}
        for i in range(self._num_run):
            x = self.stages[i](self.downsample_layers[i](x))
            name = f"convnext{i + 1}"
            if name in self._out_features:
                # contiguous NCHW out, as mmcls's (heads concatenate these maps)
                outs[name] = getattr(self, f"norm{i}")(x).contiguous()
        return outs
    # output_shape: Detectron2's Backbone default, from _out_feature_channels/_strides


@BACKBONE_REGISTRY.register()
def build_convnext_backbone(cfg, input_shape: ShapeSpec) -> ConvNeXt:
    """ConvNeXt from MODEL.CONVNEXT (ConvNeXt-T by default; configs/_base_/models/
    upernet_convnext.yaml)."""
    # every MODEL.CONVNEXT key is the lower-cased argument of the same name
    args = {k.lower(): v for k, v in cfg.MODEL.CONVNEXT.items()}
    return ConvNeXt(in_channels=input_shape.channels, **args)


# mmcls's ImageNet ConvNeXt (the ``convnext/downstream`` files of mmseg's configs): ``backbone.`` +
# these names and ``head.fc.*`` (dropped), which detect_backbone_format's mmcls route unwraps.
# An mmcls classifier has only ``norm3`` (its out_indices=-1): norm0..2 keep their LayerNorm 1/0
# init, as mmseg's non-strict Pretrained init leaves them.
register_weight_format(WeightFormat(
    "convnext", "ConvNeXt (mmcls)",
    lambda sd: "downsample_layers.0.0.weight" in sd
    and any(k.startswith("stages.0.0.depthwise_conv.") for k in sd),
    fills=("backbone.downsample_layers.", "backbone.stages.", "backbone.norm3."),
))
