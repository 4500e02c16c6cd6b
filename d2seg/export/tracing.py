"""What the model computes differently while it is traced for export (ONNX, TorchScript,
torch.export), so that the graph keeps the input's height and width symbolic.

Eager PyTorch never takes these paths: the parity suite keeps testing the plain formulations.
This module imports nothing from d2seg, so that model code can use it.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["is_exporting", "adaptive_avg_pool2d", "AdaptiveAvgPool2d"]


# torch.compiler.is_exporting appeared in torch 2.7; before it, dynamo tracing (torch.export,
# and torch.compile too: the same maths either way) is what can be told apart
_dynamo_exporting = getattr(torch.compiler, "is_exporting", torch.compiler.is_compiling)


def is_exporting() -> bool:
    """True under ``torch.jit.trace`` / the TorchScript-based ONNX exporter, and under
    ``torch.export`` / the dynamo ONNX exporter."""
    return torch.jit.is_tracing() or _dynamo_exporting()


def _bin_weights(size: torch.Tensor, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``bins x size`` averaging matrix of adaptive pooling: bin i covers
    ``[floor(i * size / bins), ceil((i + 1) * size / bins))`` (PyTorch's and ONNX's rule)."""
    pos = torch.arange(size, device=like.device)
    i = torch.arange(bins, device=like.device)[:, None]
    start = torch.div(i * size, bins, rounding_mode="floor")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="floor")
    inside = ((pos >= start) & (pos < end)).to(like.dtype)
    return inside / inside.sum(1, keepdim=True)


def adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` for any input size in an exported graph: ONNX has no adaptive
    pooling, and the exporters only lower it when the bins are equal (a static size that the
    pool size divides). Two small matmuls with the bin matrices give the same means up to float
    rounding (summation order); eager calls and global pooling take the plain op."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    if not is_exporting() or (oh == 1 and ow == 1):
        return F.adaptive_avg_pool2d(x, (oh, ow))
    h, w = x.shape[-2], x.shape[-1]
    wh = _bin_weights(torch.as_tensor(h), oh, x)
    ww = _bin_weights(torch.as_tensor(w), ow, x)
    return torch.matmul(torch.matmul(wh, x), ww.t())


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that exports with dynamic input sizes (see
    :func:`adaptive_avg_pool2d`); no parameters, so checkpoint keys are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.output_size)
