"""Speed options of a model (config node ``MODEL.SPEED``), applied without touching its maths.

- ``WINOGRAD`` / ``GEMM_1X1``: faster CPU convolutions (Winograd F(2x2,3x3) "F2" / F(4x4,3x3)
  "F4"; 1x1 convs as GEMMs), CPU fp32 only: :mod:`d2seg.cpu_kernels`;
- ``CHANNELS_LAST``: NHWC weights (activations follow);
- ``FUSED_ATTENTION``: ``scaled_dot_product_attention`` in NonLocal / ANN / DANet-PAM / OCR;
- ``FOLD_PROJECTIONS``: a linear 1x1 projection composed into the 1x1 conv that follows it
  (ANN's attention ``out_project`` into its fusion ``bottleneck``: a 2048 x 256 GEMM for a
  2048 x 2048 one); modules that can do it have a ``fold_projections`` attribute;
- ``COMPILE``: ``torch.compile`` of the backbone's and every head's forward;
- ``FUSE_BN``: BN folded into convs by :func:`optimize_for_inference` (inference only).

Inference autocast (``amp_dtype``) comes from ``SOLVER.AMP`` (``ENABLED`` + ``DTYPE``): one dtype
key for training and inference, as mmseg's fp16 configs run both in fp16.

The options are a build step: the meta-architecture applies them at the end of its constructor,
before ``build_model`` returns (so before DDP builds its buckets over the parameters' strides, or
``torch.compile`` traces), or :func:`optimize_for_inference` applies them to a built model.
``forward`` never swaps a class. State-dict keys never change: the CPU kernels swap classes,
compile wraps bound ``forward`` methods. Applying is idempotent.
"""
import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

from detectron2.utils.logger import log_first_n

from ..cpu_kernels import WINOGRAD_TILES, convert_to_cpu_kernels
from .fuse import fuse_conv_bn
from .layers.non_local import NonLocal2d
from .layers.self_attention import SelfAttentionBlock

__all__ = ["SpeedOptions", "optimize_for_inference", "autocast_context", "amp_dtype_from_config"]

logger = logging.getLogger(__name__)

_DTYPES = {"": None, "float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str):
    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def amp_dtype_from_config(cfg) -> str:
    """The autocast dtype name of ``cfg`` ("" = no autocast): SOLVER.AMP.DTYPE when
    SOLVER.AMP.ENABLED."""
    if not cfg.SOLVER.AMP.ENABLED:
        return ""
    if parse_dtype(cfg.SOLVER.AMP.DTYPE) is None:
        raise ValueError(f"SOLVER.AMP.ENABLED needs SOLVER.AMP.DTYPE float16 or bfloat16, got "
                         f"{cfg.SOLVER.AMP.DTYPE!r}")
    return cfg.SOLVER.AMP.DTYPE


@dataclass
class SpeedOptions:
    winograd: str = ""
    channels_last: bool = False
    compile: bool = False
    amp_dtype: str = ""  # inference autocast; from SOLVER.AMP in from_config
    fuse_bn: bool = True
    fused_attention: bool = False
    gemm_1x1: bool = False
    fold_projections: bool = False

    def __post_init__(self):
        if self.winograd not in WINOGRAD_TILES:
            raise ValueError(f"MODEL.SPEED.WINOGRAD={self.winograd!r} is not one of "
                             f"{sorted(WINOGRAD_TILES)}")
        parse_dtype(self.amp_dtype)

    @classmethod
    def from_config(cls, cfg) -> "SpeedOptions":
        s = cfg.MODEL.SPEED
        return cls(winograd=s.WINOGRAD, channels_last=s.CHANNELS_LAST, compile=s.COMPILE,
                   amp_dtype=amp_dtype_from_config(cfg), fuse_bn=s.FUSE_BN,
                   fused_attention=s.FUSED_ATTENTION, gemm_1x1=s.GEMM_1X1,
                   fold_projections=s.FOLD_PROJECTIONS)

    def apply(self, model: nn.Module) -> nn.Module:
        """CPU kernels, fused attention, folded projections, channels_last and compile, in place
        (idempotent: what is already applied is left as it is). Call it before wrapping the
        model in DDP or ``torch.compile``."""
        convert_to_cpu_kernels(model, self.winograd, self.gemm_1x1)
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
        if (isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
                and max(m.dilation) > 1):
            cls = type(m)
            if not isinstance(m, _NCHWInputMixin):
                if cls not in _NCHW_CLASSES:
                    _NCHW_CLASSES[cls] = type(f"NCHW{cls.__name__}", (_NCHWInputMixin, cls), {})
                m.__class__ = _NCHW_CLASSES[cls]
            if not m.weight.is_contiguous():  # again after a second model.to(channels_last)
                m.weight.data = m.weight.data.contiguous()
    return model


def _compile_forward(module) -> None:
    if module is not None and not hasattr(module, "_d2seg_compiled"):
        module.forward = torch.compile(module.forward)
        module._d2seg_compiled = True


def autocast_context(amp_dtype: str, device: torch.device):
    """``torch.autocast`` for ``amp_dtype`` ("" = a no-op context). float16 on a CPU runs in
    float32: mmseg's fp16 configs mean the GPU, and CPU float16 kernels are slow or missing."""
    dtype = parse_dtype(amp_dtype)
    device_type = torch.device(device).type
    if dtype == torch.float16 and device_type == "cpu":
        log_first_n(logging.INFO, "SOLVER.AMP.DTYPE float16 on the CPU: inference runs in "
                    "float32 (bfloat16 autocasts on the CPU)", n=1)
        dtype = None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def optimize_for_inference(model: nn.Module, options: SpeedOptions = None) -> nn.Module:
    """Eval mode, BN folded into convs (``options.fuse_bn``), then the build-time options; in
    place. The model then gives the unfused model's outputs within float rounding (F4 Winograd:
    relative ~1e-6), and must not be trained any more."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise TypeError("optimize_for_inference needs the model itself, not its DDP wrapper "
                        "(model.module): it changes parameters DDP has registered")
    options = options or getattr(model, "speed", None) or SpeedOptions()
    model.eval()
    if options.fuse_bn:
        fuse_conv_bn(model)
    options.apply(model)
    return model
