"""mmcv's ``PSAMask`` (PSANet's point-wise attention placement) in plain PyTorch.

The input holds, at every feature position p, a ``h_mask x w_mask`` window of attention values
centred on p. The output is the dense ``(h*w) x h x w`` map: the part of each window that falls
inside the feature map is placed at the positions it covers, the rest stays zero
(mmcv/ops/csrc/pytorch/cpu/psamask.cpp). For a pair (p, q) of positions the window entry is
unique (``q - p + half``), so both modes are one gather with a cached index map:

- ``distribute``: ``out[n, p, q] = in[n, window(q - p), p]``
- ``collect``:    ``out[n, q, p] = in[n, window(q - p), p]`` (the transpose)
"""
from functools import lru_cache
from typing import Tuple

import torch
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["PSAMask", "psa_mask"]


@lru_cache(maxsize=16)
def _window_index(h: int, w: int, h_mask: int, w_mask: int, device: torch.device):
    """(h*w, h*w) index into the window channels for each (p, q), and where it is valid."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                            indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    # mmcv centres the window at (h_mask - 1) // 2 (the lower middle for even sizes)
    dy = ys[None, :] - ys[:, None] + (h_mask - 1) // 2  # [p, q]
    dx = xs[None, :] - xs[:, None] + (w_mask - 1) // 2
    valid = (dy >= 0) & (dy < h_mask) & (dx >= 0) & (dx < w_mask)
    index = torch.where(valid, dy * w_mask + dx, torch.zeros_like(dy))
    return index, valid


def psa_mask(x: torch.Tensor, psa_type: str, mask_size: Tuple[int, int]) -> torch.Tensor:
    """``x``: N x (h_mask*w_mask) x H x W -> N x (H*W) x H x W (see the module docstring)."""
    if psa_type not in ("collect", "distribute"):
        raise ValueError(f"psa_type must be 'collect' or 'distribute', got {psa_type!r}")
    h_mask, w_mask = _pair(mask_size)
    n, c, h, w = x.shape
    if c != h_mask * w_mask:
        raise ValueError(f"PSAMask: {c} channels, expected h_mask*w_mask = {h_mask * w_mask}")
    index, valid = _window_index(h, w, h_mask, w_mask, x.device)
    hw = h * w
    per_pos = x.reshape(n, c, hw).transpose(1, 2)  # [n, p, window]
    out = per_pos.gather(2, index.expand(n, hw, hw))  # [n, p, q]
    out = torch.where(valid, out, out.new_zeros(()))
    if psa_type == "collect":
        out = out.transpose(1, 2)
    return out.reshape(n, hw, h, w)


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
