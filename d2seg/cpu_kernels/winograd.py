"""Winograd convolution for 3x3, stride-1 convs on the CPU (training and inference).

oneDNN's direct convolution already runs near the CPU's peak, so the only way to make the big
3x3 convs of the zoo (the heads' 512-channel convs, the dilated res4/res5 convs) faster is to do
fewer multiplications: Winograd's minimal filtering F(m x m, 3 x 3) computes an m x m output
tile from an (m+2) x (m+2) input tile with (m+2)^2 multiplications per channel pair instead of
9 m^2, as (m+2)^2 independent GEMMs (Lavin & Gray, 2016):

    V = B^T d B   (input tiles)     U = G g G^T   (filters)     Y = A^T (U . V) A   (output)

- ``m=2``: F(2x2,3x3), 2.25x fewer multiplications, rounding error as small as the direct conv's;
- ``m=4``: F(4x4,3x3) with the points (0, 1, -1, 1/2, -2) (more accurate than the usual
  +-2 ones), 4x fewer multiplications, rounding error ~10x the direct conv's (relative 1e-6).

A dilated conv (padding = dilation d) is d*d undilated convs on the polyphase sub-grids
``x[..., a::d, b::d]``, which join the GEMMs' columns. GEMMs run in MKL at ~85 % of the conv's
efficiency; the transforms use persistent per-thread workspaces, because fresh large CPU
allocations page-fault (on this kind of VM several times slower than the copies themselves).

Backward (training) is a custom autograd function: the same three GEMM shapes, with the input
transform recomputed instead of saved (memory stays that of the direct conv).
"""
import math
import threading
from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d

from .tap_conv import row_split_saving, tap_conv3x3

__all__ = [
    "WinogradConv2d", "WinogradPlainConv2d", "winograd_conv2d", "winograd_eligible",
    "convert_to_winograd", "clear_workspace", "winograd_matrices",
]

# Interpolation points of the Cook-Toom construction (plus the point at infinity).
POINTS = {2: (0.0, 1.0, -1.0), 4: (0.0, 1.0, -1.0, 0.5, -2.0)}


@lru_cache(maxsize=None)
def winograd_matrices(m: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 ``B^T`` (n x n), ``G`` (n x 3), ``A^T`` (m x n) of F(m, 3), n = m + 2."""
    if m not in POINTS:
        raise ValueError(f"Winograd tile m={m} not supported (one of {sorted(POINTS)})")
    pts, n, r = POINTS[m], m + 2, 3
    AT = torch.zeros(m, n, dtype=torch.float64)
    G = torch.zeros(n, r, dtype=torch.float64)
    for j, p in enumerate(pts):
        AT[:, j] = torch.tensor([p ** i for i in range(m)], dtype=torch.float64)
        f = math.prod(p - q for q in pts if q != p)
        G[j] = torch.tensor([p ** k / f for k in range(r)], dtype=torch.float64)
    AT[m - 1, n - 1] = 1.0
    G[n - 1, r - 1] = 1.0
    # B^T solves sum_j AT[i, j] G[j, k] BT[j, :] = e_{i+k} (the algorithm is a correlation)
    rows = torch.stack([AT[i] * G[:, k] for i in range(m) for k in range(r)])
    rhs = torch.stack([torch.eye(n, dtype=torch.float64)[i + k] for i in range(m)
                       for k in range(r)])
    BT = torch.linalg.lstsq(rows, rhs).solution
    BT = torch.where(BT.abs() < 1e-12, torch.zeros_like(BT), BT)
    return BT, G, AT


@lru_cache(maxsize=None)
def _matrices(m: int, dtype: torch.dtype, device: torch.device):
    """B^T, A^T and kron(G, G) (n*n x 9) in ``dtype`` on ``device``."""
    BT, G, AT = winograd_matrices(m)
    return (BT.to(dtype=dtype, device=device), AT.to(dtype=dtype, device=device),
            torch.kron(G, G).to(dtype=dtype, device=device))


def filter_transform(weight: torch.Tensor, m: int) -> torch.Tensor:
    """U = G g G^T: (Co, C, 3, 3) -> (n*n, Co, C), one GEMM with kron(G, G)."""
    co, c = weight.shape[:2]
    GK = _matrices(m, weight.dtype, weight.device)[2]
    return torch.mm(GK, weight.reshape(co * c, 9).t()).view(GK.shape[0], co, c)


def _transform2(mat: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[p, q] = sum_ij mat[p, i] mat[q, j] x[i, j] for x (a, a, R), out (b, b, R): two
    small GEMMs (separable; memory-bound, ~2x faster than one GEMM with kron(mat, mat))."""
    b, a = mat.shape
    r = x[0, 0].numel()
    tmp = _buffer("transform", b * a * r, x)
    torch.mm(mat, x.reshape(a, a * r), out=tmp.view(b, a * r))
    torch.matmul(mat, tmp.view(b, a, r), out=out.view(b, b, r))
    return out


# ---- workspaces ----------------------------------------------------------------------------
_local = threading.local()
_all_stores = []  # every thread's store, so that clear_workspace can free them all
_stores_lock = threading.Lock()


def _buffer(name: str, numel: int, like: torch.Tensor) -> torch.Tensor:
    """A flat scratch tensor reused across calls (grown when too small)."""
    store = getattr(_local, "buffers", None)
    if store is None:
        store = _local.buffers = {}
        with _stores_lock:
            _all_stores.append(store)
    key = (name, like.dtype, like.device)
    buf = store.get(key)
    if buf is None or buf.numel() < numel:
        store.pop(key, None)
        buf = store[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel]


def clear_workspace() -> None:
    """Frees the Winograd scratch buffers of every thread (a call in flight keeps the buffers it
    holds until it returns)."""
    with _stores_lock:
        for store in _all_stores:
            store.clear()


# ---- geometry ------------------------------------------------------------------------------
def _geometry(h: int, w: int, d: int, m: int):
    hs, ws = -(-h // d), -(-w // d)  # polyphase sub-grid size
    th, tw = -(-hs // m), -(-ws // m)  # tiles per sub-grid
    return hs, ws, th, tw


def tile_efficiency(h: int, w: int, dilation: int, m: int) -> float:
    """Output pixels over computed tile pixels (< 1 when tiles overhang the map)."""
    _, _, th, tw = _geometry(h, w, dilation, m)
    return h * w / (dilation * dilation * th * tw * m * m)


def _input_transform(x: torch.Tensor, d: int, m: int, out: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) -> V (n*n, C, P) written into ``out``; P = N * d * d * th * tw."""
    n = m + 2
    N, C, H, W = x.shape
    hs, ws, th, tw = _geometry(H, W, d, m)
    if (H, W) != (hs * d, ws * d):
        x = F.pad(x, (0, ws * d - W, 0, hs * d - H))
    hp, wp = m * th + 2, m * tw + 2
    xp = _buffer("xp", N * d * d * C * hp * wp, x).view(N, d, d, C, hp, wp)
    # zero only the border (the interior is overwritten)
    xp[..., 0, :].zero_()
    xp[..., hs + 1:, :].zero_()
    xp[..., :, 0].zero_()
    xp[..., :, ws + 1:].zero_()
    xp[..., 1:hs + 1, 1:ws + 1].copy_(x.view(N, C, hs, d, ws, d).permute(0, 3, 5, 1, 2, 4))
    P = N * d * d * th * tw
    tiles = _buffer("tiles", n * n * C * P, x).view(n, n, C, N, d, d, th, tw)
    tiles.copy_(xp.unfold(4, n, m).unfold(5, n, m).permute(6, 7, 3, 0, 1, 2, 4, 5))
    BT = _matrices(m, x.dtype, x.device)[0]
    _transform2(BT, tiles.view(n, n, C * P), out)
    return out.view(n * n, C, P)


def _output_transform(M: torch.Tensor, bias: Optional[torch.Tensor], shape, d: int, m: int,
                      channels_last: bool) -> torch.Tensor:
    """M (n*n, Co, P) -> output (N, Co, H, W) (+ bias)."""
    N, _, H, W = shape
    n, co = m + 2, M.shape[1]
    _, _, th, tw = _geometry(H, W, d, m)
    AT = _matrices(m, M.dtype, M.device)[1]
    Y = _buffer("Y", m * m * M[0].numel(), M)
    _transform2(AT, M.view(n, n, -1), Y)
    Y = Y.view(m, m, co, N, d, d, th, tw).permute(3, 2, 6, 0, 4, 7, 1, 5)
    full = (N, co, th * m * d, tw * m * d)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    exact = full[2:] == (H, W)
    out = (torch.empty(full, dtype=M.dtype, device=M.device, memory_format=fmt) if exact
           else _buffer("out", math.prod(full), M).view(full))
    ov = out.view(N, co, th, m, d, tw, m, d)
    if bias is not None:
        torch.add(Y, bias.view(1, -1, 1, 1, 1, 1, 1, 1), out=ov)
    else:
        ov.copy_(Y)
    if not exact:
        out = out[:, :, :H, :W].clone(memory_format=fmt)
    return out


def _forward(x: torch.Tensor, U: torch.Tensor, bias, d: int, m: int) -> torch.Tensor:
    n = m + 2
    N, C, H, W = x.shape
    _, _, th, tw = _geometry(H, W, d, m)
    P = N * d * d * th * tw
    V = _input_transform(x, d, m, _buffer("V", n * n * C * P, x))
    M = _buffer("M", n * n * U.shape[1] * P, x).view(n * n, U.shape[1], P)
    torch.bmm(U, V, out=M)
    return _output_transform(M, bias, (N, U.shape[1], H, W), d, m, _channels_last(x))


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)


class _WinogradFunction(torch.autograd.Function):
    """Training. Backward: grad_x is itself a Winograd conv of grad_out (the transposed,
    flipped filter, same padding and dilation); grad_w = G^T (sum over tiles of
    A-adjoint(grad tiles) x V^T) G, with V recomputed from x."""

    @staticmethod
    def forward(ctx, x, weight, bias, dilation, m):
        ctx.save_for_backward(x, weight)
        ctx.dilation, ctx.m, ctx.has_bias = dilation, m, bias is not None
        return _forward(x, filter_transform(weight, m).contiguous(), bias, dilation, m)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        d, m = ctx.dilation, ctx.m
        n = m + 2
        N, C, H, W = x.shape
        co = weight.shape[0]
        _, _, th, tw = _geometry(H, W, d, m)
        P = N * d * d * th * tw
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            full = (th * m * d, tw * m * d)
            g = grad_out
            if tuple(g.shape[-2:]) != full:
                g = F.pad(g, (0, full[1] - W, 0, full[0] - H))
            # gY[x, y, co, N, a, b, t, s] = grad at row (t*m + x)*d + a, col (s*m + y)*d + b
            gY = _buffer("Y", m * m * co * P, x).view(m, m, co, N, d, d, th, tw)
            gY.copy_(g.reshape(N, co, th, m, d, tw, m, d).permute(3, 6, 1, 0, 4, 7, 2, 5))
            _, AT, GK = _matrices(m, x.dtype, x.device)
            gM = _buffer("M", n * n * co * P, x)
            _transform2(AT.t(), gY.view(m, m, co * P), gM)
            V = _input_transform(x, d, m, _buffer("V", n * n * C * P, x))
            gU = torch.bmm(gM.view(n * n, co, P), V.transpose(1, 2))  # (n*n, co, C)
            grad_w = torch.mm(gU.view(n * n, co * C).t(), GK).view(co, C, 3, 3)
        if ctx.needs_input_grad[0]:
            flipped = weight.transpose(0, 1).flip(2, 3)
            grad_x = _forward(grad_out, filter_transform(flipped, m).contiguous(), None, d, m)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def winograd_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    dilation: int = 1, m: int = 4, U: Optional[torch.Tensor] = None):
    """``F.conv2d(x, weight, bias, padding=dilation, dilation=dilation)`` for a 3x3 kernel by
    Winograd F(m x m, 3 x 3). ``U``: precomputed :func:`filter_transform` (inference)."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"winograd_conv2d needs a 3x3 kernel, got {tuple(weight.shape)}")
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _WinogradFunction.apply(x, weight, bias, dilation, m)
    if U is None:
        U = filter_transform(weight, m).contiguous()
    return _forward(x, U, bias, dilation, m)


# ---- modules -------------------------------------------------------------------------------
def winograd_eligible(conv: nn.Conv2d, min_channels: int = 128) -> bool:
    """A 3x3 stride-1 ungrouped conv with "same" padding (= dilation) and wide enough."""
    return (
        isinstance(conv, nn.Conv2d)
        and tuple(conv.kernel_size) == (3, 3)
        and tuple(conv.stride) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.dilation[0] == conv.dilation[1]
        and tuple(conv.padding) == tuple(conv.dilation)
        and min(conv.in_channels, conv.out_channels) >= min_channels
    )


class _WinogradMixin:
    winograd_m: int = 4
    max_dilation: int = 4  # F2 gains nothing on dilated convs (the polyphase copies): 1
    min_tile_efficiency: float = 0.75  # below: too much padding, use the direct conv

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dilation[0]
        if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4
                or torch.is_autocast_enabled("cpu")):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                            self.dilation, self.groups)
        if (d > self.max_dilation or tile_efficiency(x.shape[2], x.shape[3], d, self.winograd_m)
                < self.min_tile_efficiency):
            if row_split_saving(x.shape[2], d) >= 0.1:
                return tap_conv3x3(x, self.weight, self.bias, d)
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                            self.dilation, self.groups)
        U = None
        if not (torch.is_grad_enabled() and self.weight.requires_grad):
            # inference: cache U = G g G^T until the weight changes
            key = (self.weight.data_ptr(), self.weight._version, self.winograd_m)
            if getattr(self, "_winograd_key", None) != key:
                with torch.no_grad():
                    self._winograd_U = filter_transform(self.weight, self.winograd_m).contiguous()
                self._winograd_key = key
            U = self._winograd_U
        return winograd_conv2d(x, self.weight, self.bias, d, self.winograd_m, U)


def conv_norm_act_forward(self, x):
    """Detectron2 ``Conv2d.forward`` with the conv itself by ``self._conv`` (the classes that
    swap in another convolution algorithm share it)."""
    x = self._conv(x)
    if self.norm is not None:
        x = self.norm(x)
    if self.activation is not None:
        x = self.activation(x)
    return x


class WinogradConv2d(_WinogradMixin, Conv2d):
    """Detectron2 ``Conv2d`` (conv -> norm -> activation) whose conv runs by Winograd."""

    forward = conv_norm_act_forward


class WinogradPlainConv2d(_WinogradMixin, nn.Conv2d):
    """``nn.Conv2d`` whose conv runs by Winograd."""

    def forward(self, x):
        return self._conv(x)


# measured on a 2-core AMD EPYC (Zen 4), 64 x 128 maps: F4 beats oneDNN's direct conv from 128
# channels and up to dilation 4 (0.4-0.7x the time), F2 from 256 channels, undilated (0.7-0.8x)
DEFAULTS = {4: dict(min_channels=128, max_dilation=4), 2: dict(min_channels=256, max_dilation=1)}


def convert_to_winograd(model: nn.Module, m: int = 4, min_channels: Optional[int] = None,
                        max_dilation: Optional[int] = None) -> nn.Module:
    """Switches every eligible conv of ``model`` (see :func:`winograd_eligible`) to Winograd
    F(m x m, 3 x 3), in place (class swap: parameters, buffers and state_dict keys unchanged).
    Convs dilated by more than ``max_dilation`` (or whose tiles would overhang the map by more
    than 25 %) keep the direct conv at run time."""
    if m not in DEFAULTS:
        raise ValueError(f"Winograd tile m={m} not supported (one of {sorted(DEFAULTS)})")
    if min_channels is None:
        min_channels = DEFAULTS[m]["min_channels"]
    if max_dilation is None:
        max_dilation = DEFAULTS[m]["max_dilation"]
    for module in model.modules():
        if isinstance(module, _WinogradMixin) or not winograd_eligible(module, min_channels):
            continue
        if isinstance(module, Conv2d):
            module.__class__ = WinogradConv2d
        elif type(module) is nn.Conv2d:
            module.__class__ = WinogradPlainConv2d
        else:
            continue
        module.winograd_m = m
        module.max_dilation = max_dilation
    return model
