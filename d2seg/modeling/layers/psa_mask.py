"""mmcv's ``PSAMask`` (PSANet's point-wise attention placement) in plain PyTorch.

The input holds, at every feature position p, a ``h_mask x w_mask`` window of attention values
centred on p. The output is the dense ``(h*w) x h x w`` map: the part of each window that falls
inside the feature map is placed at the positions it covers, the rest stays zero
(mmcv/ops/csrc/pytorch/cpu/psamask.cpp). For a pair (p, q) of positions the window entry is
unique (row ``qy - py + cy``, column ``qx - px + cx``), so both modes are a pure gather:

- ``distribute``: ``out[n, p, q] = in[n, window(q - p), p]``
- ``collect``:    ``out[n, q, p] = in[n, window(q - p), p]`` (the transpose)

The window row depends only on (py, qy) and its column only on (px, qx), so the gather runs in
two steps with an ``h x h`` and a ``w x w`` index built from the input's size in the graph: no
``hw x hw`` index (512 MB of int64 per branch at 1024x2048), nothing cached, and an exported
graph keeps h and w symbolic.
"""
from typing import Tuple

import torch
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["PSAMask", "psa_mask"]


def _window_offsets(size, mask: int, device):
    """For positions p (rows) and q (columns) along one axis: the window index
    ``q - p + centre`` (clamped) and whether the window covers q; and the positions."""
    pos = torch.arange(size, device=device)
    # mmcv centres the window at (mask - 1) // 2 (the lower middle for even sizes)
    offset = pos[None, :] - pos[:, None] + (mask - 1) // 2  # [p, q]
    valid = (offset >= 0) & (offset < mask)
    return offset.clamp(0, mask - 1), valid, pos[:, None]


def psa_mask(x: torch.Tensor, psa_type: str, mask_size: Tuple[int, int]) -> torch.Tensor:
    """``x``: N x (h_mask*w_mask) x H x W -> N x (H*W) x H x W (see the module docstring)."""
    if psa_type not in ("collect", "distribute"):
        raise ValueError(f"psa_type must be 'collect' or 'distribute', got {psa_type!r}")
    h_mask, w_mask = _pair(mask_size)
    n, c, h, w = x.shape
    if c != h_mask * w_mask:
        raise ValueError(f"PSAMask: {c} channels, expected h_mask*w_mask = {h_mask * w_mask}")
    win_y, valid_y, py = _window_offsets(h, h_mask, x.device)
    win_x, valid_x, px = _window_offsets(w, w_mask, x.device)
    # rows: x[n, a, b, py, px] -> [py, qy, n, b, px] (only the window rows that land inside)
    out = x.reshape(n, h_mask, w_mask, h, w)[:, win_y, :, py, :]
    # columns: -> [py, qy, n, px, qx]
    out = out[:, :, :, win_x, px]
    out = out.masked_fill(~(valid_y[:, :, None, None, None] & valid_x[None, None, None]), 0)
    if psa_type == "distribute":  # [n, (py, px), qy, qx]
        return out.permute(2, 0, 3, 1, 4).reshape(n, h * w, h, w)
    return out.permute(2, 1, 4, 0, 3).reshape(n, h * w, h, w)  # collect: [n, (qy, qx), py, px]


class PSAMask(nn.Module):
    """Parameter-free module wrapper of :func:`psa_mask` (mmcv.ops.PSAMask)."""

    def __init__(self, psa_type: str, mask_size: Tuple[int, int]):
        super().__init__()
        if psa_type not in ("collect", "distribute"):
            raise ValueError(f"psa_type must be 'collect' or 'distribute', got {psa_type!r}")
        self.psa_type = psa_type
        self.mask_size = tuple(_pair(mask_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return psa_mask(x, self.psa_type, self.mask_size)

    def extra_repr(self) -> str:
        return f"psa_type={self.psa_type}, mask_size={self.mask_size}"
