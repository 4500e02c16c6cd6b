"""1x1 convolutions as one GEMM each (``MODEL.SPEED.GEMM_1X1``, CPU).

A 1x1 stride-1 conv is ``W (Co x Ci) @ x (Ci x HW)`` per image. On an NCHW (or channels-last)
tensor that matrix is the tensor itself, so a GEMM reads it in place, while oneDNN's convolution
first reorders input, weights and output to its blocked layouts. Measured on a 2-core AMD EPYC at
the sizes of the R-50-D8 bottlenecks (1 x 1024 x 64 x 128 -> 256 channels, 2048 -> 512, 256 x
128 x 256 -> 64): the GEMM takes 0.6-0.9x the conv's time. Same sum, other summation order:
outputs differ by float rounding only. Training works unchanged (autograd of a GEMM is two GEMMs).

Most of that gain is memory, not arithmetic: under glibc's default malloc every large fresh
tensor is new mmap'ed memory that page-faults on first touch, and oneDNN's conv touches more of
it. With an allocator that keeps its pages (e.g. ``MALLOC_MMAP_MAX_=0`` and a large
``MALLOC_TRIM_THRESHOLD_``, or jemalloc) the same convs take 0.65-0.92x the GEMM's time (see
docs/benchmark.md, "Allocator"): leave this option off there.
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d

from .winograd import conv_norm_act_forward

__all__ = ["PointwiseGemmConv2d", "PointwiseGemmPlainConv2d", "conv1x1",
           "convert_pointwise_to_gemm", "pointwise_eligible", "pointwise_conv2d"]


def pointwise_eligible(conv: nn.Module) -> bool:
    """An ungrouped 1x1, stride-1, unpadded conv."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1)
            and tuple(conv.stride) == (1, 1) and tuple(conv.padding) == (0, 0)
            and conv.groups == 1)


def pointwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1x1 ``weight``, as a GEMM over x's own memory."""
    n, c, h, w = x.shape
    w2 = weight.view(weight.shape[0], c)
    if x.is_contiguous():  # NCHW: (Co x Ci) @ (Ci x HW) per image, bias fused into the GEMM
        xs = x.view(n, c, h * w)
        b = None if bias is None else bias.view(-1, 1)
        if n == 1:
            y = torch.mm(w2, xs[0]) if b is None else torch.addmm(b, w2, xs[0])
        else:  # one batched GEMM writes the output in place (no per-image results to stack)
            wn = w2.expand(n, -1, -1)
            y = torch.bmm(wn, xs) if b is None else torch.baddbmm(b.expand(n, -1, h * w), wn, xs)
        return y.view(n, -1, h, w)
    if x.is_contiguous(memory_format=torch.channels_last):  # NHWC: (HW x Ci) @ (Ci x Co)
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
        y = torch.addmm(bias, rows, w2.t()) if bias is not None else rows @ w2.t()
        return y.view(n, h, w, -1).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """A 1x1 conv: :func:`pointwise_conv2d` on the CPU in fp32, ``F.conv2d`` elsewhere (GPU,
    autocast)."""
    if x.device.type != "cpu" or x.dim() != 4 or torch.is_autocast_enabled("cpu"):
        return F.conv2d(x, weight, bias)
    return pointwise_conv2d(x, weight, bias)


class _PointwiseMixin:
    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        return conv1x1(x, self.weight, self.bias)


class PointwiseGemmConv2d(_PointwiseMixin, Conv2d):
    """Detectron2 ``Conv2d`` (conv -> norm -> activation) whose 1x1 conv is a GEMM."""

    forward = conv_norm_act_forward


class PointwiseGemmPlainConv2d(_PointwiseMixin, nn.Conv2d):
    """``nn.Conv2d`` (1x1) computed as a GEMM."""

    def forward(self, x):
        return self._conv(x)


def convert_pointwise_to_gemm(model: nn.Module) -> nn.Module:
    """Every eligible 1x1 conv of ``model`` computed as a GEMM, in place (class swap: parameters
    and state_dict keys unchanged)."""
    for module in model.modules():
        if isinstance(module, _PointwiseMixin) or not pointwise_eligible(module):
            continue
        if isinstance(module, Conv2d):
            module.__class__ = PointwiseGemmConv2d
        elif type(module) is nn.Conv2d:
            module.__class__ = PointwiseGemmPlainConv2d
    return model
