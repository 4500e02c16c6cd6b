"""mmseg's ``Feature2Pyramid`` (BEiT, MAE): four same-stride ViT maps -> a pyramid, by
``RESCALES`` (4, 2, 1, 0.5): 4x = ConvT 2/2 -> norm -> GELU -> ConvT 2/2 (``upsample_4x``),
2x = ConvT 2/2 (``upsample_2x``), 1x = identity, 0.5x / 0.25x = max-pool 2 / 4
(``downsample_2x`` / ``downsample_4x``). Outputs ``pyramid1``..: one per input, in order; widths
unchanged. Module names are mmseg's (``neck.upsample_4x.{0,1,3}``, ``neck.upsample_2x.0``);
PyTorch's default init, as mmseg's (a plain nn.Module there).
"""
from typing import Dict

from torch import nn

from detectron2.layers import ShapeSpec, get_norm

from ...config import register_config_keys
from . import NECK_REGISTRY, Neck, neck_in_features

__all__ = ["Feature2Pyramid"]

# mmseg applies fixed operation lists by position, whatever the rescales say: [up4, up2, id,
# down2] when 4 is among them, else [up2, id, down2, down4]; only their prefixes are consistent
_ORDERS = ([4, 2, 1, 0.5], [2, 1, 0.5, 0.25])


@register_config_keys
def add_feature2pyramid_keys(keys):
    keys.MODEL.NECK.RESCALES = [4, 2, 1, 0.5]  # Feature2Pyramid: scale of each output
    keys.MODEL.NECK.NORM = "SyncBN"  # Feature2Pyramid: the norm inside upsample_4x


@NECK_REGISTRY.register()
class Feature2Pyramid(Neck):
    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__()
        self.in_features = neck_in_features(cfg, input_shape)
        rescales = [float(r) for r in cfg.MODEL.NECK.RESCALES]
        if not any(rescales == order[: len(rescales)] for order in _ORDERS) or not rescales:
            raise ValueError(f"MODEL.NECK.RESCALES={list(cfg.MODEL.NECK.RESCALES)}: mmseg's "
                             "Feature2Pyramid takes [4, 2, 1, 0.5] or [2, 1, 0.5, 0.25] (or a "
                             "prefix of one)")
        if len(rescales) != len(self.in_features):
            raise ValueError(f"MODEL.NECK.RESCALES={rescales} needs one input per scale; "
                             f"MODEL.NECK.IN_FEATURES gives {self.in_features}")
        channels = {input_shape[f].channels for f in self.in_features}
        if len(channels) != 1:
            raise ValueError(f"Feature2Pyramid: inputs {self.in_features} must have one width "
                             f"(mmseg's embed_dim), got {sorted(channels)}")
        c = channels.pop()
        self.rescales = rescales
        ops = []
        for r in rescales:
            if r == 4:
                self.upsample_4x = nn.Sequential(
                    nn.ConvTranspose2d(c, c, 2, 2), get_norm(cfg.MODEL.NECK.NORM, c), nn.GELU(),
                    nn.ConvTranspose2d(c, c, 2, 2))
                ops.append("upsample_4x")
            elif r == 2:
                self.upsample_2x = nn.Sequential(nn.ConvTranspose2d(c, c, 2, 2))
                ops.append("upsample_2x")
            elif r == 1:
                self.identity = nn.Identity()
                ops.append("identity")
            elif r == 0.5:
                self.downsample_2x = nn.MaxPool2d(2, 2)
                ops.append("downsample_2x")
            else:
                self.downsample_4x = nn.MaxPool2d(4, 4)
                ops.append("downsample_4x")
        self._ops = ops
        self._shapes = {
            f"pyramid{i + 1}": ShapeSpec(channels=c, stride=max(
                1, int(round(input_shape[f].stride / r)))) for i, (f, r) in
            enumerate(zip(self.in_features, rescales))}

    def forward(self, features):
        return {name: getattr(self, op)(features[f])
                for name, op, f in zip(self._shapes, self._ops, self.in_features)}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return dict(self._shapes)
