"""Naive per-pixel loop of mmcv's PSAMask CPU kernel (mmcv/ops/csrc/pytorch/cpu/psamask.cpp),
the reference for d2seg's vectorised op and the stand-in for mmcv's compiled op in parity tests."""
import torch
from torch import nn


def naive_psa_mask(x, psa_type, mask_size):
    h_mask, w_mask = mask_size
    half_h, half_w = (h_mask - 1) // 2, (w_mask - 1) // 2
    n, c, h_feat, w_feat = x.shape
    assert c == h_mask * w_mask
    out = x.new_zeros(n, h_feat * w_feat, h_feat, w_feat)
    for h in range(h_feat):
        for w in range(w_feat):
            for hidx in range(max(0, half_h - h), min(h_mask, h_feat + half_h - h)):
                for widx in range(max(0, half_w - w), min(w_mask, w_feat + half_w - w)):
                    qh, qw = hidx + h - half_h, widx + w - half_w
                    val = x[:, hidx * w_mask + widx, h, w]
                    if psa_type == "collect":
                        out[:, qh * w_feat + qw, h, w] = val
                    else:
                        out[:, h * w_feat + w, qh, qw] = val
    return out


class NaivePSAMask(nn.Module):
    """Drop-in for mmcv.ops.PSAMask (same constructor)."""

    def __init__(self, psa_type, mask_size=None):
        super().__init__()
        self.psa_type, self.mask_size = psa_type, tuple(mask_size)

    def forward(self, x):
        return naive_psa_mask(x, self.psa_type, self.mask_size)
