"""SETR's multi-level feature aggregation (mmseg's ``MLANeck``): each input through its own
LayerNorm over the channels (``norm.{i}``, eps 1e-6) and a 1x1 conv-norm-act
(``mla.channel_proj.{i}``); then, deepest input first, a cumulative top-down sum, each sum
through a 3x3 conv-norm-act (``mla.feat_extract.{i}``). The outputs keep mmseg's order, which is
the REVERSE of the inputs': ``mla0`` is the sum's first term (the last input alone), ``mla3``
the sum of all. All inputs must share one size (SETR's ViT maps, stride 16)."""
from typing import Dict

from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec

from ...config import register_config_keys
from ..heads.setr_up import LN_EPS, channel_layer_norm
from ..layers.conv import conv_norm_act
from . import NECK_REGISTRY, Neck, neck_in_features

__all__ = ["MLANeck"]

ACTIVATIONS = ("", "ReLU")


@register_config_keys
def add_mla_neck_keys(keys):
    keys.MODEL.NECK.MLA = CN()
    # mmseg's norm_cfg / act_cfg of the convs: "" = None (MLANeck's defaults); the SETR configs
    # use "SyncBN" and "ReLU"
    keys.MODEL.NECK.MLA.NORM = ""
    keys.MODEL.NECK.MLA.ACTIVATION = ""


class MLAModule(nn.Module):
    def __init__(self, in_channels, out_channels: int, norm: str, activation: bool):
        super().__init__()
        self.channel_proj = nn.ModuleList(
            conv_norm_act(c, out_channels, 1, norm=norm, activation=activation)
            for c in in_channels)
        self.feat_extract = nn.ModuleList(
            conv_norm_act(out_channels, out_channels, 3, norm=norm, activation=activation)
            for _ in in_channels)

    def forward(self, inputs):
        feats = [conv(x) for x, conv in zip(inputs, self.channel_proj)][::-1]  # deepest first
        outs, acc = [], None
        for feat, conv in zip(feats, self.feat_extract):
            acc = feat if acc is None else acc + feat
            outs.append(conv(acc))
        return outs


@NECK_REGISTRY.register()
class MLANeck(Neck):
    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__()
        self.in_features = neck_in_features(cfg, input_shape)
        mla = cfg.MODEL.NECK.MLA
        if mla.ACTIVATION not in ACTIVATIONS:
            raise ValueError(f"MODEL.NECK.MLA.ACTIVATION={mla.ACTIVATION!r}: not one of "
                             f"{ACTIVATIONS}")
        strides = {input_shape[f].stride for f in self.in_features}
        if len(strides) != 1:
            raise ValueError(f"MLANeck sums its inputs: MODEL.NECK.IN_FEATURES={self.in_features}"
                             f" must share one stride, not {sorted(strides)}")
        in_channels = [input_shape[f].channels for f in self.in_features]
        out_channels = cfg.MODEL.NECK.OUT_CHANNELS
        self.norm = nn.ModuleList(nn.LayerNorm(c, eps=LN_EPS) for c in in_channels)
        self.mla = MLAModule(in_channels, out_channels, mla.NORM, bool(mla.ACTIVATION))
        self._names = [f"mla{i}" for i in range(len(in_channels))]
        self._shape = ShapeSpec(channels=out_channels, stride=strides.pop())

    def forward(self, features):
        inputs = [channel_layer_norm(features[f], norm)
                  for f, norm in zip(self.in_features, self.norm)]
        return dict(zip(self._names, self.mla(inputs)))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: self._shape for name in self._names}
