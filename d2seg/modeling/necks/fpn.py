"""mmseg's ``FPN`` neck (mmseg/models/necks/fpn.py), not Detectron2's FPN (a Backbone wrapper
with other names and init).

Module names are mmseg's ``lateral_convs.{i}`` / ``fpn_convs.{i}`` (mmcv ConvModules, which
d2seg's mmseg conversion maps to Detectron2 ``Conv2d`` + ``norm``), so ``neck.*`` checkpoint keys
load. Outputs are ``fpn0``..``fpn{NUM_OUTS-1}`` (mmseg's output order, which the heads' in_index
counts), at the strides of the inputs they come from; extra levels halve the previous one.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec

from ...config import register_config_keys
from ..layers.conv import conv_norm_act
from . import NECK_REGISTRY, Neck, neck_in_features

__all__ = ["FPN"]

EXTRA_CONVS = ("", "on_input", "on_lateral", "on_output")
ACTIVATIONS = ("", "ReLU")


@register_config_keys
def add_fpn_neck_keys(keys):
    keys.MODEL.NECK.NUM_OUTS = 4  # mmseg's num_outs
    # the rest of mmseg's FPN arguments, in their own node (other necks use MODEL.NECK.NORM, ...)
    keys.MODEL.NECK.FPN = CN()
    keys.MODEL.NECK.FPN.START_LEVEL = 0  # first input (of IN_FEATURES) with a lateral conv
    keys.MODEL.NECK.FPN.END_LEVEL = -1  # input after the last with one (exclusive); -1 = all
    # mmseg's add_extra_convs: "" (False: extra outputs are stride-2 max-pools of the last),
    # "on_input", "on_lateral" or "on_output" (= mmseg's True): stride-2 3x3 convs instead
    keys.MODEL.NECK.FPN.ADD_EXTRA_CONVS = ""
    keys.MODEL.NECK.FPN.RELU_BEFORE_EXTRA_CONVS = False
    keys.MODEL.NECK.FPN.NO_NORM_ON_LATERAL = False
    keys.MODEL.NECK.FPN.NORM = ""  # mmseg's norm_cfg (None = ""), a Detectron2 get_norm name
    keys.MODEL.NECK.FPN.ACTIVATION = ""  # mmseg's act_cfg: "" (None) or "ReLU"
    # mmseg's upsample_cfg: mode, and scale_factor (0 = to the finer level's size)
    keys.MODEL.NECK.FPN.UPSAMPLE_MODE = "nearest"
    keys.MODEL.NECK.FPN.UPSAMPLE_SCALE_FACTOR = 0.0
    keys.MODEL.NECK.FPN.UPSAMPLE_ALIGN_CORNERS = False  # (linear modes only)


@NECK_REGISTRY.register()
class FPN(Neck):
    """Lateral 1x1 convs, top-down upsample-and-add, 3x3 ``fpn_convs``; extra levels by
    max-pool or stride-2 convs. Convs are xavier-uniform with zero bias (mmseg's init_cfg,
    applied over ConvModule's own kaiming init), norms 1/0."""

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__()
        node, fpn = cfg.MODEL.NECK, cfg.MODEL.NECK.FPN
        self.in_features = neck_in_features(cfg, input_shape)
        in_channels = [input_shape[f].channels for f in self.in_features]
        strides = [input_shape[f].stride for f in self.in_features]
        num_ins, out_channels, num_outs = len(in_channels), node.OUT_CHANNELS, node.NUM_OUTS
        start, end = fpn.START_LEVEL, fpn.END_LEVEL
        if not 0 <= start < num_ins:
            raise ValueError(f"MODEL.NECK.FPN.START_LEVEL={start}: an input index, "
                             f"0..{num_ins - 1} (IN_FEATURES {self.in_features})")
        if end == -1:
            self.backbone_end_level = num_ins
            if num_outs < num_ins - start:
                raise ValueError(f"MODEL.NECK.NUM_OUTS={num_outs}: at least the {num_ins - start} "
                                 f"inputs from START_LEVEL={start} of {self.in_features}")
        else:
            if not start < end <= num_ins or num_outs != end - start:
                raise ValueError(f"MODEL.NECK.FPN.END_LEVEL={end}: in {start + 1}..{num_ins} with "
                                 f"NUM_OUTS = END_LEVEL - START_LEVEL (got NUM_OUTS={num_outs})")
            self.backbone_end_level = end
        if fpn.ADD_EXTRA_CONVS not in EXTRA_CONVS:
            raise ValueError(f"MODEL.NECK.FPN.ADD_EXTRA_CONVS={fpn.ADD_EXTRA_CONVS!r} is not "
                             f"one of {EXTRA_CONVS}")
        if fpn.ACTIVATION not in ACTIVATIONS:
            raise ValueError(f"MODEL.NECK.FPN.ACTIVATION={fpn.ACTIVATION!r} is not one of "
                             f"{ACTIVATIONS}")
        self.start_level = start
        self.num_outs = num_outs
        self.add_extra_convs = fpn.ADD_EXTRA_CONVS
        self.relu_before_extra_convs = fpn.RELU_BEFORE_EXTRA_CONVS
        self.upsample_mode = fpn.UPSAMPLE_MODE
        self.upsample_scale = fpn.UPSAMPLE_SCALE_FACTOR
        self.upsample_align_corners = (
            fpn.UPSAMPLE_ALIGN_CORNERS if "linear" in fpn.UPSAMPLE_MODE else None)

        def conv(cin, k, stride=1, norm=fpn.NORM):
            return conv_norm_act(cin, out_channels, k, norm=norm, stride=stride,
                                 activation=bool(fpn.ACTIVATION))

        lateral_norm = "" if fpn.NO_NORM_ON_LATERAL else fpn.NORM
        levels = range(start, self.backbone_end_level)
        self.lateral_convs = nn.ModuleList(conv(in_channels[i], 1, norm=lateral_norm)
                                           for i in levels)
        self.fpn_convs = nn.ModuleList(conv(out_channels, 3) for _ in levels)
        out_strides = [strides[i] for i in levels]
        for i in range(num_outs - len(out_strides)):
            out_strides.append(out_strides[-1] * 2)
            if self.add_extra_convs:
                cin = (in_channels[self.backbone_end_level - 1]
                       if i == 0 and self.add_extra_convs == "on_input" else out_channels)
                self.fpn_convs.append(conv(cin, 3, stride=2))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self._out_shape = {f"fpn{i}": ShapeSpec(channels=out_channels, stride=s)
                           for i, s in enumerate(out_strides)}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._out_shape)

    def _upsample(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.upsample_scale:
            return F.interpolate(x, scale_factor=self.upsample_scale, mode=self.upsample_mode,
                                 align_corners=self.upsample_align_corners)
        return F.interpolate(x, size=like.shape[2:], mode=self.upsample_mode,
                             align_corners=self.upsample_align_corners)

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        inputs = [features[f] for f in self.in_features]
        laterals: List[torch.Tensor] = [conv(inputs[i + self.start_level])
                                        for i, conv in enumerate(self.lateral_convs)]
        used = len(laterals)
        for i in range(used - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + self._upsample(laterals[i], laterals[i - 1])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        if self.num_outs > used:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                source = {"on_input": inputs[self.backbone_end_level - 1],
                          "on_lateral": laterals[-1], "on_output": outs[-1]}
                outs.append(self.fpn_convs[used](source[self.add_extra_convs]))
                for i in range(used + 1, self.num_outs):
                    x = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](x))
        return {f"fpn{i}": out for i, out in enumerate(outs)}
