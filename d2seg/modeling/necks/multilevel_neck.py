"""mmseg's ``MultiLevelNeck`` (ViT/DeiT + UPerNet): each input through a 1x1 ``lateral_convs``
conv, resized by its ``scales`` factor (bilinear, align_corners False, by scale factor as mmseg),
then a 3x3 ``convs`` conv; convs with bias, no norm or activation (no shipped config sets
them). Outputs ``mln0``.. (one per scale; one input is reused for every scale), at the input's
stride / scale."""
from typing import Dict

import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec

from ...config import register_config_keys
from . import NECK_REGISTRY, Neck, neck_in_features

__all__ = ["MultiLevelNeck"]


@register_config_keys
def add_multilevel_neck_keys(keys):
    # scale factor of each output (mmseg's default; the ViT/DeiT configs: [4, 2, 1, 0.5])
    keys.MODEL.NECK.SCALES = [0.5, 1.0, 2.0, 4.0]


@NECK_REGISTRY.register()
class MultiLevelNeck(Neck):
    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__()
        self.in_features = neck_in_features(cfg, input_shape)
        self.scales = [float(s) for s in cfg.MODEL.NECK.SCALES]
        out_channels = cfg.MODEL.NECK.OUT_CHANNELS
        n = len(self.in_features)
        if not self.scales or any(s <= 0 for s in self.scales) or n not in (1, len(self.scales)):
            raise ValueError(f"MODEL.NECK.SCALES={list(cfg.MODEL.NECK.SCALES)}: positive factors, "
                             f"one per input of MODEL.NECK.IN_FEATURES={self.in_features} (or "
                             "any number for one input)")
        self.lateral_convs = nn.ModuleList(
            nn.Conv2d(input_shape[f].channels, out_channels, 1) for f in self.in_features)
        self.convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in self.scales)
        self._names = [f"mln{i}" for i in range(len(self.scales))]
        strides = [input_shape[self.in_features[i if n > 1 else 0]].stride / s
                   for i, s in enumerate(self.scales)]
        self._shapes = {name: ShapeSpec(channels=out_channels,
                                        stride=int(st) if st == int(st) else st)
                        for name, st in zip(self._names, strides)}
        for m in self.modules():  # mmcv's xavier_init: uniform, gain 1, bias 0
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features):
        inputs = [conv(features[f]) for f, conv in zip(self.in_features, self.lateral_convs)]
        if len(inputs) == 1:
            inputs = inputs * len(self.scales)
        outs = {}
        for name, x, scale, conv in zip(self._names, inputs, self.scales, self.convs):
            if scale != 1.0:  # (mmseg interpolates at 1 too: the identity)
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            outs[name] = conv(x)
        return outs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shapes)
