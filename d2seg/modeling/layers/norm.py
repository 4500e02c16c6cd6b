"""A Detectron2 norm (``get_norm`` name) with mmcv's ``norm_cfg`` ``eps`` / ``momentum``."""
import functools

from detectron2.layers import get_norm

__all__ = ["norm_with"]


def _build_norm(norm: str, eps: float, momentum: float, channels: int):
    layer = get_norm(norm, channels)
    if eps:
        layer.eps = eps
    if momentum:
        layer.momentum = momentum
    return layer


def norm_with(norm, eps: float = 0.0, momentum: float = 0.0):
    """``norm`` for ``get_norm`` / ``conv_norm_act``: unchanged when ``eps`` and ``momentum`` are
    0 (the layer's defaults), else a picklable factory that sets them on each new layer, as mmcv's
    ``norm_cfg=dict(type=..., eps=..., momentum=...)`` (e.g. MobileNetV3's eps 1e-3, Fast-SCNN's
    momentum 0.01)."""
    if not norm or not (eps or momentum) or not isinstance(norm, str):
        return norm
    if eps < 0 or not 0 <= momentum <= 1:
        raise ValueError(f"norm {norm!r}: eps={eps} must be >= 0 and momentum={momentum} in [0, 1]")
    return functools.partial(_build_norm, norm, eps, momentum)
