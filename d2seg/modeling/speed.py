"""Speed options of a model (config node ``MODEL.SPEED``), applied without touching its maths.

- ``WINOGRAD``: 3x3 stride-1 convs of >= 256 channels by Winograd F(2x2,3x3) ("F2", rounding
  like the direct conv) or F(4x4,3x3) ("F4"), CPU fp32 only (d2seg/modeling/layers/winograd.py);
- ``GEMM_1X1``: 1x1 convs as plain GEMMs over the activations' own memory, CPU
  (d2seg/modeling/layers/pointwise.py);
- ``CHANNELS_LAST``: NHWC weights (activations follow);
- ``FUSED_ATTENTION``: ``scaled_dot_product_attention`` in NonLocal / ANN / DANet-PAM / OCR;
- ``FOLD_PROJECTIONS``: a linear 1x1 projection composed into the 1x1 conv that follows it
  (ANN's attention ``out_project`` into its fusion ``bottleneck``: a 2048 x 256 GEMM for a
  2048 x 2048 one); modules that can do it have a ``fold_projections`` attribute;
- ``COMPILE``: ``torch.compile`` of the backbone's and every head's forward;
- ``AMP_DTYPE``: inference under ``torch.autocast`` (bfloat16 / float16);
- ``FUSE_BN``: BN folded into convs by :func:`optimize_for_inference` (inference only).

The build-time options are applied by the meta-architecture on its first forward (so that a
cascade's extra heads are included) or by :func:`optimize_for_inference`. State-dict keys never
change: Winograd swaps classes, compile wraps bound ``forward`` methods.
"""
import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from .fuse import fuse_conv_bn
from .layers.non_local import NonLocal2d
from .layers.self_attention import SelfAttentionBlock
from .layers.pointwise import convert_pointwise_to_gemm
from .layers.winograd import convert_to_winograd

__all__ = ["SpeedOptions", "optimize_for_inference", "autocast_context"]

logger = logging.getLogger(__name__)

_DTYPES = {"": None, "float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
_WINOGRAD = {"": 0, "F2": 2, "F4": 4}


def parse_dtype(name: str):
    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]


@dataclass
class SpeedOptions:
    winograd: str = ""
    channels_last: bool = False
    compile: bool = False
    amp_dtype: str = ""
    fuse_bn: bool = True
    fused_attention: bool = False
    gemm_1x1: bool = False
    fold_projections: bool = False

    def __post_init__(self):
        if self.winograd not in _WINOGRAD:
            raise ValueError(f"MODEL.SPEED.WINOGRAD={self.winograd!r} is not one of "
                             f"{sorted(_WINOGRAD)}")
        parse_dtype(self.amp_dtype)

    @classmethod
    def from_config(cls, cfg) -> "SpeedOptions":
        s = cfg.MODEL.SPEED
        return cls(winograd=s.WINOGRAD, channels_last=s.CHANNELS_LAST, compile=s.COMPILE,
                   amp_dtype=s.AMP_DTYPE, fuse_bn=s.FUSE_BN, fused_attention=s.FUSED_ATTENTION,
                   gemm_1x1=s.GEMM_1X1, fold_projections=s.FOLD_PROJECTIONS)

    @property
    def is_default(self) -> bool:
        return not (self.winograd or self.channels_last or self.compile or self.fused_attention
                    or self.gemm_1x1 or self.fold_projections)

    def apply(self, model: nn.Module) -> nn.Module:
        """Winograd, 1x1 GEMMs, fused attention, channels_last and compile, in place
        (idempotent)."""
        if getattr(model, "_d2seg_speed_applied", False):
            return model
        if self.winograd:
            convert_to_winograd(model, _WINOGRAD[self.winograd])
        if self.gemm_1x1:
            convert_pointwise_to_gemm(model)
        if self.fused_attention:
            for m in model.modules():
                if isinstance(m, (SelfAttentionBlock, NonLocal2d)):
                    m.fused_attention = True
        if self.fold_projections:
            for m in model.modules():
                if hasattr(type(m), "fold_projections"):
                    m.fold_projections = True
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            keep_dilated_depthwise_nchw(model)
        if self.compile:
            for name in ("backbone", "decode_head", "cascade_head"):
                _compile_forward(getattr(model, name, None))
            for head in getattr(model, "auxiliary_heads", ()):
                _compile_forward(head)
        model._d2seg_speed_applied = True
        return model


class _NCHWInputMixin:
    """Runs the conv on an NCHW input and gives the output back channels-last: oneDNN's dilated
    depthwise conv is 5-20x slower on channels-last tensors than on NCHW ones (DeepLabV3+'s
    separable ASPP, dilations 12-36)."""

    def forward(self, x):
        if x.dim() == 4 and not x.is_contiguous():
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


_NCHW_CLASSES = {}


def keep_dilated_depthwise_nchw(model: nn.Module) -> nn.Module:
    """Makes dilated depthwise convs of a channels-last ``model`` compute in NCHW (in place)."""
    for m in model.modules():
        if (isinstance(m, nn.Conv2d) and not isinstance(m, _NCHWInputMixin) and m.groups > 1
                and m.groups == m.in_channels and max(m.dilation) > 1):
            cls = type(m)
            if cls not in _NCHW_CLASSES:
                _NCHW_CLASSES[cls] = type(f"NCHW{cls.__name__}", (_NCHWInputMixin, cls), {})
            m.__class__ = _NCHW_CLASSES[cls]
            m.weight.data = m.weight.data.clone(memory_format=torch.contiguous_format)
    return model


def _compile_forward(module) -> None:
    if module is not None and not hasattr(module, "_d2seg_compiled"):
        module.forward = torch.compile(module.forward)
        module._d2seg_compiled = True


def autocast_context(amp_dtype: str, device: torch.device):
    """``torch.autocast`` for ``amp_dtype`` ("" = a no-op context)."""
    dtype = parse_dtype(amp_dtype)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def optimize_for_inference(model: nn.Module, options: SpeedOptions = None) -> nn.Module:
    """Eval mode, BN folded into convs (``options.fuse_bn``), then the build-time options; in
    place. The model then gives the unfused model's outputs within float rounding (F4 Winograd:
    relative ~1e-6), and must not be trained any more."""
    options = options or getattr(model, "speed", None) or SpeedOptions()
    model.eval()
    if options.fuse_bn:
        fuse_conv_bn(model)
    options.apply(model)
    return model
