"""Non-local block (embedded Gaussian / dot product), as mmcv 1.7's ``NonLocal2d``."""
import torch
import torch.nn.functional as F
from torch import nn

from .conv import conv_norm_act

__all__ = ["NonLocal2d"]


class NonLocal2d(nn.Module):
    """``x + conv_out(softmax(theta(x)^T phi(x)) g(x))`` over all H*W positions.

    ``g``/``theta``/``phi`` are 1x1 convs (bias, no norm) to ``in_channels // reduction``,
    initialised normal(std=0.01); ``conv_out`` is a 1x1 conv + ``norm`` whose norm weight (or,
    without a norm, the conv) is zero-initialised, so the block starts as the identity.
    ``mode``: "embedded_gaussian" (softmax, divided by sqrt(inter channels) if ``use_scale``)
    or "dot_product" (divided by the number of positions)."""

    # MODEL.SPEED.FUSED_ATTENTION: embedded Gaussian by scaled_dot_product_attention (same
    # maths, no HW x HW matrix in memory); off by default so outputs stay bit-equal to mmseg's
    fused_attention = False

    def __init__(self, in_channels: int, reduction: int = 2, use_scale: bool = True, *,
                 norm: str = "", mode: str = "embedded_gaussian"):
        super().__init__()
        if mode not in ("embedded_gaussian", "dot_product"):
            raise ValueError(
                f"NonLocal2d: mode={mode!r} is not supported ('embedded_gaussian', 'dot_product')"
            )
        self.in_channels = in_channels
        self.inter_channels = max(in_channels // reduction, 1)
        self.use_scale = use_scale
        self.mode = mode
        self.g = conv_norm_act(in_channels, self.inter_channels, 1, activation=False)
        self.conv_out = conv_norm_act(self.inter_channels, in_channels, 1, norm=norm,
                                      activation=False)
        self.theta = conv_norm_act(in_channels, self.inter_channels, 1, activation=False)
        self.phi = conv_norm_act(in_channels, self.inter_channels, 1, activation=False)
        for m in (self.g, self.theta, self.phi):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        # mmcv's zeros_init: zero the norm if there is one, else the conv
        last = self.conv_out.norm if self.conv_out.norm is not None else self.conv_out
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        g_x = self.g(x).view(n, self.inter_channels, -1).transpose(1, 2)  # N x HW x C'
        theta_x = self.theta(x).view(n, self.inter_channels, -1).transpose(1, 2)
        phi_x = self.phi(x).view(n, self.inter_channels, -1)  # N x C' x HW
        if self.fused_attention and self.mode == "embedded_gaussian":
            scale = self.inter_channels ** -0.5 if self.use_scale else 1.0
            # contiguous rows: the CPU's fused kernel needs unit stride on the channel dim
            y = F.scaled_dot_product_attention(
                theta_x.contiguous(), phi_x.transpose(1, 2).contiguous(), g_x.contiguous(),
                scale=scale)
            return x + self.conv_out(y.transpose(1, 2).reshape(n, self.inter_channels, h, w))
        pairwise = torch.matmul(theta_x, phi_x)  # N x HW x HW
        if self.mode == "embedded_gaussian":
            if self.use_scale:
                pairwise = pairwise / self.inter_channels ** 0.5
            pairwise = pairwise.softmax(dim=-1)
        else:
            pairwise = pairwise / pairwise.shape[-1]
        # contiguous, as mmcv: as a view y is channels-last, and conv_out's conv + training-mode
        # BN then round differently (tests/parity/test_train_step_parity.py)
        y = torch.matmul(pairwise, g_x).transpose(1, 2).contiguous()
        return x + self.conv_out(y.reshape(n, self.inter_channels, h, w))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, inter_channels={self.inter_channels}, "
                f"mode={self.mode!r}")
