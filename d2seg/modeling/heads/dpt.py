"""DPT's head (mmseg's ``DPTHead``: ReassembleBlocks, PreActResidualConvUnit,
FeatureFusionBlock), on four ViT outputs of one stride and their class tokens (``vit{i}_cls``,
MODEL.VIT.OUTPUT_CLS_TOKEN) for the readout.

Reassemble: readout (``project``: Linear(2C -> C) + GELU on [token, class token]; ``add``;
``ignore``), a 1x1 conv to POST_PROCESS_CHANNELS[i], then x4 / x2 transposed convs, identity or a
stride-2 3x3 conv (strides 4, 8, 16, 32 for a 16-pixel patch). A bias-free 3x3 conv brings each
to CONVS_DIM; fusion blocks run deepest first (the first has no ``res_conv_unit1``), each
ending in a x2 bilinear upsampling with align_corners=True; a 3x3 conv-norm-ReLU, then
``conv_seg``: logits at half the patch's stride.
"""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...config import register_config_keys
from ..layers.conv import conv_norm_act, init_conv_module
from .base import BaseDecodeHead, resize

__all__ = ["DPTHead"]

READOUT_TYPES = ("ignore", "add", "project")


@register_config_keys
def add_dpt_head_keys(keys):
    # mmseg's DPTHead arguments; embed_dims is the input features' width (read from them)
    keys.MODEL.DPT_HEAD = CN()
    keys.MODEL.DPT_HEAD.POST_PROCESS_CHANNELS = [96, 192, 384, 768]  # post_process_channels
    keys.MODEL.DPT_HEAD.READOUT_TYPE = "ignore"  # readout_type (configs/dpt: "project")


class ReassembleBlocks(nn.Module):
    def __init__(self, in_channels: int, out_channels: List[int], readout_type: str):
        super().__init__()
        self.readout_type = readout_type
        self.projects = nn.ModuleList(
            conv_norm_act(in_channels, c, 1, activation=False) for c in out_channels)
        # torch's default init, as mmseg (no ConvModules)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1)])
        if readout_type == "project":
            self.readout_projects = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * in_channels, in_channels), nn.GELU())
                for _ in out_channels)

    def forward(self, inputs: List[torch.Tensor], cls_tokens: List[Optional[torch.Tensor]]):
        out = []
        for i, (x, cls) in enumerate(zip(inputs, cls_tokens)):
            if self.readout_type == "project":
                tokens = x.flatten(2).transpose(1, 2)
                tokens = torch.cat((tokens, cls.unsqueeze(1).expand_as(tokens)), dim=-1)
                x = self.readout_projects[i](tokens).transpose(1, 2).reshape(x.shape)
            elif self.readout_type == "add":
                x = x + cls[:, :, None, None]
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class PreActResidualConvUnit(nn.Module):
    """x + (ReLU -> conv3x3 -> norm) twice."""

    def __init__(self, channels: int, norm):
        super().__init__()
        self.conv1 = conv_norm_act(channels, channels, 3, norm=norm, activation=False)
        self.conv2 = conv_norm_act(channels, channels, 3, norm=norm, activation=False)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    def __init__(self, channels: int, norm, with_residual_input: bool = True):
        super().__init__()
        self.project = conv_norm_act(channels, channels, 1, activation=False)
        if with_residual_input:
            self.res_conv_unit1 = PreActResidualConvUnit(channels, norm)
        self.res_conv_unit2 = PreActResidualConvUnit(channels, norm)

    def forward(self, x, res: Optional[torch.Tensor] = None):
        if res is not None:
            # the coarser path rounds up (stride-2 conv) and doubles: match the lateral's size
            x = x + self.res_conv_unit1(resize(res, x.shape[-2:], align_corners=False))
        x = self.res_conv_unit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


@SEM_SEG_HEADS_REGISTRY.register()
class DPTHead(BaseDecodeHead):
    @configurable
    def __init__(self, input_shape, *, post_process_channels: List[int],
                 readout_type: str = "ignore", **kwargs):
        super().__init__(input_shape, **kwargs)
        if readout_type not in READOUT_TYPES:
            raise ValueError(f"MODEL.DPT_HEAD.READOUT_TYPE={readout_type!r}: not one of "
                             f"{READOUT_TYPES}")
        if len(self.in_features) != 4 or len(post_process_channels) != 4:
            raise ValueError(f"DPTHead reassembles four maps: IN_FEATURES={self.in_features} and "
                             f"MODEL.DPT_HEAD.POST_PROCESS_CHANNELS={list(post_process_channels)}"
                             " must each have 4 entries")
        strides = {input_shape[f].stride for f in self.in_features}
        if len(set(self.in_channels)) != 1 or len(strides) != 1:
            raise ValueError(f"DPTHead needs IN_FEATURES {self.in_features} of one width and one "
                             f"stride (ViT outputs), got widths {self.in_channels} and strides "
                             f"{sorted(strides)}")
        self.readout_type = readout_type
        # x4 .. x1/2 reassembly, then four x2 fusions from the coarsest
        self.common_stride = max(strides.pop() // 8, 1)
        embed_dims = self.in_channels[0]
        self.reassemble_blocks = ReassembleBlocks(embed_dims, post_process_channels,
                                                  readout_type)
        # mmseg's ConvModule(bias=False) without a norm or activation
        self.convs = nn.ModuleList(Conv2d(c, self.channels, 3, padding=1, bias=False)
                                   for c in post_process_channels)
        for conv in self.convs:
            init_conv_module(conv)
        self.fusion_blocks = nn.ModuleList(
            FeatureFusionBlock(self.channels, self.norm, with_residual_input=i > 0)
            for i in range(4))
        self.project = conv_norm_act(self.channels, self.channels, 3, norm=self.norm)

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["input_transform"] = "multiple_select"  # as mmseg's config
        ret["post_process_channels"] = list(cfg.MODEL.DPT_HEAD.POST_PROCESS_CHANNELS)
        ret["readout_type"] = cfg.MODEL.DPT_HEAD.READOUT_TYPE
        return ret

    def _cls_tokens(self, features: Dict[str, torch.Tensor]):
        if self.readout_type == "ignore":
            return [None] * len(self.in_features)
        missing = [f + "_cls" for f in self.in_features if f + "_cls" not in features]
        if missing:
            raise ValueError(f"DPTHead's readout {self.readout_type!r} needs the class tokens "
                             f"{missing}: set MODEL.VIT.OUTPUT_CLS_TOKEN True")
        return [features[f + "_cls"] for f in self.in_features]

    def forward(self, features, targets=None):
        x = self.reassemble_blocks(self.transform_inputs(features), self._cls_tokens(features))
        x = [conv(f) for conv, f in zip(self.convs, x)]
        out = self.fusion_blocks[0](x[-1])
        for i in range(1, len(self.fusion_blocks)):
            out = self.fusion_blocks[i](out, x[-(i + 1)])
        logits = self.cls_seg(self.project(out))
        losses = self.losses(logits, targets) if targets is not None else {}
        return logits, losses
