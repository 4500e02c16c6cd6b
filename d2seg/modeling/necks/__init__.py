"""Necks between backbone and heads (mmseg's ``model.neck``), registered in ``NECK_REGISTRY``
under MMSegmentation's class names.

A neck is an ``nn.Module`` built as ``NECK_REGISTRY.get(name)(cfg, input_shape)`` from the
backbone's ``output_shape()``; it maps the backbone's feature dict to its own feature dict and
reports that dict's ``output_shape()``, which the heads then read by name
(``MODEL.SEM_SEG_HEAD.IN_FEATURES``). It sits at ``model.neck`` as mmseg's ``neck.*`` checkpoint
keys. ``MODEL.NECK.NAME`` "" (the default) = no neck: the heads read the backbone directly.
A neck family declares its own keys under ``MODEL.NECK`` with
:func:`d2seg.config.register_config_keys`, next to its code.
"""
from typing import Dict, Optional

from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

from ...config import register_config_keys

__all__ = ["NECK_REGISTRY", "build_neck", "Neck"]

NECK_REGISTRY = Registry("NECK")
NECK_REGISTRY.__doc__ = """Necks between backbone and heads: called with (cfg, input_shape)."""


@register_config_keys
def add_neck_keys(keys):
    keys.MODEL.NECK = CN()
    keys.MODEL.NECK.NAME = ""  # registered name in NECK_REGISTRY; "" = no neck
    # backbone features the neck reads, in mmseg's in_channels order; [] = all of them, in the
    # backbone's order
    keys.MODEL.NECK.IN_FEATURES = []
    keys.MODEL.NECK.OUT_CHANNELS = 256  # mmseg's out_channels (per output where it is one int)


class Neck(nn.Module):
    """Base of d2seg's necks: ``forward(features: dict) -> dict`` plus ``output_shape()``."""

    def output_shape(self) -> Dict[str, ShapeSpec]:
        raise NotImplementedError


def neck_in_features(cfg, input_shape: Dict[str, ShapeSpec]):
    """MODEL.NECK.IN_FEATURES, or every backbone output in order; unknown names are an error."""
    names = list(cfg.MODEL.NECK.IN_FEATURES) or list(input_shape)
    missing = [n for n in names if n not in input_shape]
    if missing:
        raise ValueError(f"MODEL.NECK.IN_FEATURES={names}: {missing} not among the backbone's "
                         f"outputs {list(input_shape)}")
    return names


def build_neck(cfg, input_shape: Dict[str, ShapeSpec]) -> Optional[nn.Module]:
    """The neck named MODEL.NECK.NAME on the backbone's ``input_shape``; None when NAME is ""."""
    name = cfg.MODEL.NECK.NAME
    if not name:
        return None
    return NECK_REGISTRY.get(name)(cfg, input_shape)
from . import multilevel_neck  # noqa: E402,F401
from .fpn import FPN  # noqa: F401,E402
from .ic_neck import ICNeck  # noqa: F401,E402
from .featurepyramid import Feature2Pyramid  # noqa: F401,E402
from .mla_neck import MLANeck  # noqa: F401,E402
