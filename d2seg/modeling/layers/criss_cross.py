"""Criss-cross attention (CCNet), as mmcv 1.7's ``mmcv.ops.CrissCrossAttention``."""
import torch
import torch.nn.functional as F
from torch import nn

from .scale import Scale

__all__ = ["CrissCrossAttention"]


class CrissCrossAttention(nn.Module):
    """Each position attends to the positions in its row and column: one softmax over the
    H + W energies, with the position itself excluded from the column part (it is already in
    the row part). The result, scaled by ``gamma`` (``Scale(0)``: identity at init), is added
    to the input."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.query_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.key_conv = nn.Conv2d(in_channels, in_channels // 8, 1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, 1)
        self.gamma = Scale(0.0)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        query = self.query_conv(x)
        key = self.key_conv(x)
        value = self.value_conv(x)
        # column energies [b, h, w, i] (i: row index of the key); -inf where i == h
        energy_h = torch.einsum("bchw,bciw->bhwi", query, key)
        # [h, 1, i]; from arange, not eye(h): an exported graph then keeps h symbolic
        rows = torch.arange(h, device=x.device)
        diag = (rows[:, None] == rows[None, :])[:, None, :]
        energy_h = energy_h.masked_fill(diag, float("-inf"))
        energy_w = torch.einsum("bchw,bchj->bhwj", query, key)  # row energies
        attn = F.softmax(torch.cat([energy_h, energy_w], dim=-1), dim=-1)
        out = torch.einsum("bciw,bhwi->bchw", value, attn[..., :h])
        out = out + torch.einsum("bchj,bhwj->bchw", value, attn[..., h:])
        return self.gamma(out) + x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}"
