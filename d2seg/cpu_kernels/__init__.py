"""Faster CPU convolutions (``MODEL.SPEED.WINOGRAD`` / ``MODEL.SPEED.GEMM_1X1``).

Not part of any model's definition: each kernel computes what ``F.conv2d`` computes, in fewer
operations or over the activations' own memory, on the CPU in float32 only (on a GPU, under
autocast or in another dtype the swapped convs call ``F.conv2d``). Switched on by class swaps that
keep every parameter and state-dict key (:func:`convert_to_cpu_kernels`).

- ``winograd.py``: 3x3 stride-1 convs by Winograd F(2x2,3x3) / F(4x4,3x3);
- ``tap_conv.py``: 3x3 convs of large dilation that skip the zero padding (used by Winograd's
  fallback);
- ``pointwise.py``: 1x1 convs as GEMMs.
"""
from torch import nn

from .pointwise import conv1x1, convert_pointwise_to_gemm
from .winograd import clear_workspace, convert_to_winograd

__all__ = ["WINOGRAD_TILES", "convert_to_cpu_kernels", "free_workspaces", "conv1x1"]

# MODEL.SPEED.WINOGRAD value -> output tile size m of F(m x m, 3 x 3)
WINOGRAD_TILES = {"": 0, "F2": 2, "F4": 4}


def convert_to_cpu_kernels(model: nn.Module, winograd: str = "",
                           gemm_1x1: bool = False) -> nn.Module:
    """Switches ``model``'s eligible convs to the CPU kernels, in place (class swaps)."""
    if winograd not in WINOGRAD_TILES:
        raise ValueError(f"MODEL.SPEED.WINOGRAD={winograd!r} is not one of "
                         f"{sorted(WINOGRAD_TILES)}")
    if winograd:
        convert_to_winograd(model, WINOGRAD_TILES[winograd])
    if gemm_1x1:
        convert_pointwise_to_gemm(model)
    return model


def free_workspaces() -> None:
    """Frees the kernels' scratch buffers (kept between calls to avoid page faults), in every
    thread; the next call allocates them again at its size."""
    clear_workspace()
