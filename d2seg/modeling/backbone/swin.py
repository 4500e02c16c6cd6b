"""Swin Transformer (mmseg's ``SwinTransformer``) as a Detectron2 backbone with outputs
``swin1``..``swin4`` (strides 4, 8, 16, 32 with the default strides).

Outputs are named after the family and mmseg's stage (``out_indices`` + 1), as MiT's ``mit1``..

Module names and nesting are mmseg's, so an mmseg UPerNet-Swin checkpoint's backbone keys load
unchanged: ``patch_embed.{projection,norm}``; ``stages.{i}.blocks.{j}`` with ``norm1``,
``attn.w_msa.{qkv,proj,relative_position_bias_table,relative_position_index}``, ``norm2`` and
``ffn.layers.{0.0,1}`` (mmcv's FFN); ``stages.{i}.downsample.{norm,reduction}`` (PatchMerging, at
the end of every stage but the last); ``norm{i}`` the LayerNorm of each output stage.

Behaviour kept from mmseg (it differs from Microsoft's original in places):
- the patch embedding and every PatchMerging zero-pad the bottom/right to a multiple of their
  stride (mmcv's ``AdaptivePadding(padding='corner')``); every block pads its map to a multiple
  of the window and crops after, also when the map is smaller than the window (no window shrink);
- PatchMerging concatenates each 2x2 neighbourhood in ``nn.Unfold``'s (C, kh, kw) channel order,
  not the original's [x0, x1, x2, x3]: the official ImageNet weights are reordered on loading
  (d2seg/checkpoint/backbones.py, as mmseg's swin2mmseg.py);
- the shifted-window mask is rebuilt for the padded map at every forward, with -100 (not -inf);
- attention is softmax(q k^T * scale + relative position bias [+ mask]) v, run through
  ``F.scaled_dot_product_attention`` with bias and mask as its float ``attn_mask``.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...config import register_config_keys
from ...export.tracing import is_exporting
from .mit import DropPath, init_linear_or_layernorm_, nchw_to_nlc, nlc_to_nchw

__all__ = ["SwinTransformer", "build_swin_backbone"]

MASK_VALUE = -100.0  # mmseg's fill for token pairs of different regions in a shifted window


@register_config_keys
def add_swin_keys(keys):
    keys.MODEL.SWIN = CN()
    keys.MODEL.SWIN.EMBED_DIMS = 96  # stage i has EMBED_DIMS * 2**i channels (T/S 96, B 128, L 192)
    keys.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]  # blocks per stage (S/B/L: 2, 2, 18, 2)
    keys.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]  # (S 3,6,12,24; B 4,8,16,32; L 6,12,24,48)
    keys.MODEL.SWIN.PATCH_SIZE = 4  # non-overlapping patch embedding (== STRIDES[0])
    keys.MODEL.SWIN.STRIDES = [4, 2, 2, 2]  # patch embedding, then each stage's PatchMerging
    keys.MODEL.SWIN.WINDOW_SIZE = 7  # 12 for the 384x384-pretrained models
    keys.MODEL.SWIN.MLP_RATIO = 4
    keys.MODEL.SWIN.QKV_BIAS = True
    keys.MODEL.SWIN.QK_SCALE = 0.0  # 0 = head_dims ** -0.5 (mmseg's qk_scale=None)
    keys.MODEL.SWIN.PATCH_NORM = True  # LayerNorm after the patch embedding and in PatchMerging
    keys.MODEL.SWIN.DROP_RATE = 0.0
    keys.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    keys.MODEL.SWIN.DROP_PATH_RATE = 0.1  # linear from 0 over all blocks (the UPerNet configs: 0.3)
    keys.MODEL.SWIN.WITH_CP = False  # activation checkpointing of each block while training
    keys.MODEL.SWIN.OUT_FEATURES = ["swin1", "swin2", "swin3", "swin4"]


def corner_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """mmcv's ``AdaptivePadding(padding='corner')`` of an N x C x H x W map: zeros at the
    bottom/right so that ceil(H / stride) windows of ``kernel`` fit. The sizes stay graph values
    when traced for export (which always pads, possibly by 0)."""
    h, w = x.shape[-2], x.shape[-1]
    pad_h = (h + stride - 1) // stride * stride - stride + kernel - h
    pad_w = (w + stride - 1) // stride * stride - stride + kernel - w
    if kernel < stride:  # (never with mmseg's Swin: kernel == stride, or 2 and stride <= 2)
        pad_h, pad_w = max(pad_h, 0), max(pad_w, 0)
    if is_exporting() or pad_h > 0 or pad_w > 0:
        x = F.pad(x, [0, pad_w, 0, pad_h])
    return x


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` conv (input padded as mmseg) -> LayerNorm on the tokens."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int, norm: bool):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, patch_size)
        self.norm = nn.LayerNorm(embed_dims) if norm else None

    def forward(self, x):
        x = self.projection(corner_pad(x, self.patch_size, self.patch_size))
        hw = (x.shape[2], x.shape[3])
        x = nchw_to_nlc(x)
        return (x if self.norm is None else self.norm(x)), hw


class PatchMerging(nn.Module):
    """Each 2 x 2 neighbourhood (stride ``stride``) concatenated in ``nn.Unfold``'s (C, kh, kw)
    channel order -> LayerNorm -> Linear ``reduction`` without bias."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: bool):
        super().__init__()
        self.stride = stride
        self.norm = nn.LayerNorm(4 * in_channels) if norm else None
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x, hw):
        n, _, c = x.shape
        x = corner_pad(nlc_to_nchw(x, hw), 2, self.stride)
        if self.stride == 2:  # non-overlapping: Unfold is a reshape (no im2col in the graph)
            h, w = x.shape[2] // 2, x.shape[3] // 2
            x = x.reshape(n, c, h, 2, w, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w, 4 * c)
        else:
            h = (x.shape[2] - 2) // self.stride + 1
            w = (x.shape[3] - 2) // self.stride + 1
            x = F.unfold(x, 2, stride=self.stride).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return self.reduction(x), (h, w)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(ws*ws) x (ws*ws) index into the (2ws-1)^2 bias table, mmseg's construction (equal to
    Microsoft's); on the CPU, so that a model built on the meta device gets real values too."""
    seq1 = torch.arange(0, (2 * window_size - 1) * window_size, 2 * window_size - 1,
                        device="cpu")
    seq2 = torch.arange(0, window_size, device="cpu")
    coords = (seq1[:, None] + seq2[None, :]).reshape(1, -1)
    return (coords + coords.T).flip(1).contiguous()


class WindowMSA(nn.Module):
    """Multi-head self-attention inside windows, with a learnt relative position bias."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, qkv_bias: bool,
                 qk_scale: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or (embed_dims // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # persistent, as in mmseg: its checkpoints carry it
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, mask=None):
        """``x``: (B * nW) x N x C windows; ``mask``: nW x N x N (0 / -100) or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn_mask = bias.view(n, n, -1).permute(2, 0, 1)  # heads x N x N
        if mask is not None:
            # windows are ordered image-major (b * nW + w): tile the per-window mask over images
            nw = mask.shape[0]
            attn_mask = (attn_mask[None] + mask[:, None]).expand(bw // nw, -1, -1, -1, -1)
            attn_mask = attn_mask.reshape(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask.to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bw, n, c)))


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """B x H x W x C (H, W multiples of ws) -> (B * nW) x ws*ws x C, windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, b, h, w, ws: int) -> torch.Tensor:
    x = windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def shift_mask(h, w, ws: int, shift: int, device) -> torch.Tensor:
    """mmseg's SW-MSA mask for an H x W (padded) map: the map is cut into 3 x 3 regions at
    ``-ws`` and ``-shift`` along each axis; tokens of different regions in one (shifted) window
    get -100. nW x N x N; built from comparisons, so H and W stay graph values in an export."""

    def region(n):
        i = torch.arange(n, device=device)
        return (i >= n - ws).long() + (i >= n - shift).long()

    ids = region(h)[:, None] * 3 + region(w)[None, :]
    ids = window_partition(ids[None, :, :, None], ws)[..., 0]  # nW x N
    return (ids[:, None, :] != ids[:, :, None]).float() * MASK_VALUE


class ShiftWindowMSA(nn.Module):
    """(S)W-MSA on a token map: pad to a multiple of the window, cyclic shift by -shift_size
    (shifted blocks), window attention, reverse, crop; then DropPath."""

    def __init__(self, embed_dims, num_heads, window_size, shift_size, qkv_bias, qk_scale,
                 attn_drop, proj_drop, drop_path):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, window_size, qkv_bias, qk_scale,
                               attn_drop, proj_drop)
        self.drop = DropPath(drop_path)

    def forward(self, x, hw):
        b, _, c = x.shape
        h, w = hw
        ws, shift = self.window_size, self.shift_size
        x = x.view(b, h, w, c)
        pad_r = (ws - w % ws) % ws
        pad_b = (ws - h % ws) % ws
        padded = is_exporting() or pad_r > 0 or pad_b > 0
        if padded:
            x = F.pad(x, [0, 0, 0, pad_r, 0, pad_b])
        hp, wp = x.shape[1], x.shape[2]
        mask = None
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shift_mask(hp, wp, ws, shift, x.device)
        x = self.w_msa(window_partition(x, ws), mask)
        x = window_reverse(x, b, hp, wp, ws)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        if padded:
            x = x[:, :h, :w, :]
        return self.drop(x.reshape(b, h * w, c))


class FFN(nn.Module):
    """mmcv's FFN: Linear -> GELU -> Dropout -> Linear -> Dropout, DropPath, + identity."""

    def __init__(self, embed_dims: int, hidden: int, drop: float, drop_path: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, hidden), nn.GELU(), nn.Dropout(drop)),
            nn.Linear(hidden, embed_dims),
            nn.Dropout(drop),
        )
        self.dropout_layer = DropPath(drop_path)

    def forward(self, x, identity):
        return identity + self.dropout_layer(self.layers(x))


class SwinBlock(nn.Module):
    def __init__(self, embed_dims, num_heads, hidden, window_size, shift, qkv_bias, qk_scale,
                 drop_rate, attn_drop_rate, drop_path_rate, with_cp):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size,
                                   window_size // 2 if shift else 0, qkv_bias, qk_scale,
                                   attn_drop_rate, drop_rate, drop_path_rate)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, hidden, drop_rate, drop_path_rate)

    def _forward(self, x, hw):
        x = x + self.attn(self.norm1(x), hw)
        return self.ffn(self.norm2(x), identity=x)

    def forward(self, x, hw):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, hw, use_reentrant=False)
        return self._forward(x, hw)


class SwinBlockSequence(nn.Module):
    """One stage: ``blocks`` (W-MSA and SW-MSA alternating), then ``downsample`` (or None)."""

    def __init__(self, blocks: Sequence[SwinBlock], downsample):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class SwinTransformer(Backbone):
    """Patch embedding, then stages of Swin blocks each followed by a PatchMerging; each output
    stage's map (before its PatchMerging) goes through its own LayerNorm ``norm{i}``."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        embed_dims: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        patch_size: int = 4,
        strides: Sequence[int] = (4, 2, 2, 2),
        window_size: int = 7,
        mlp_ratio: int = 4,
        qkv_bias: bool = True,
        qk_scale: float = 0.0,
        patch_norm: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        with_cp: bool = False,
        out_features: Sequence[str] = ("swin1", "swin2", "swin3", "swin4"),
    ):
        super().__init__()
        lists = dict(DEPTHS=depths, NUM_HEADS=num_heads, STRIDES=strides)
        if len({len(v) for v in lists.values()}) != 1:
            raise ValueError("MODEL.SWIN: DEPTHS, NUM_HEADS and STRIDES need one value per stage, "
                             "got " + ", ".join(f"{k}={list(v)}" for k, v in lists.items()))
        if strides[0] != patch_size:  # mmseg asserts it: the patch embedding does not overlap
            raise ValueError(f"MODEL.SWIN.STRIDES[0] ({strides[0]}) must equal "
                             f"MODEL.SWIN.PATCH_SIZE ({patch_size})")
        if window_size < 2:
            raise ValueError(f"MODEL.SWIN.WINDOW_SIZE must be >= 2, got {window_size}")
        names = [f"swin{i + 1}" for i in range(len(depths))]
        dims = [embed_dims * 2 ** i for i in range(len(depths))]
        bad = [f"{d} / {h}" for d, h in zip(dims, num_heads) if d % h]
        if bad:
            raise ValueError(f"MODEL.SWIN: each stage's width (EMBED_DIMS * 2**i = {dims}) must "
                             f"be a multiple of its NUM_HEADS {list(num_heads)}; not: {bad}")
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(f"Swin OUT_FEATURES {list(out_features)}: {unknown or 'none'} not "
                             f"among {names}")
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, patch_norm)
        self.drop_after_pos = nn.Dropout(drop_rate)
        # stochastic depth grows linearly over all blocks, as mmseg's (CPU: values read back)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self._out_feature_channels, self._out_feature_strides = {}, {}
        stride = 1
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            blocks = [SwinBlock(dims[i], num_heads[i], int(mlp_ratio * dims[i]), window_size,
                                j % 2 == 1, qkv_bias, qk_scale, drop_rate, attn_drop_rate,
                                dpr[first + j], with_cp) for j in range(depth)]
            downsample = (PatchMerging(dims[i], dims[i + 1], strides[i + 1], patch_norm)
                          if i < len(depths) - 1 else None)
            self.stages.append(SwinBlockSequence(blocks, downsample))
            stride *= strides[i]
            self._out_feature_channels[names[i]] = dims[i]
            self._out_feature_strides[names[i]] = stride
        self._out_features = [f for f in names if f in out_features]
        for f in self._out_features:  # mmseg's per-output norms, named by stage index
            self.add_module(f"norm{names.index(f)}", nn.LayerNorm(dims[names.index(f)]))
        # the last stage that is an output: later ones (and its PatchMerging) are not run
        self._num_run = max(names.index(f) for f in self._out_features) + 1
        self._init_weights()

    def _init_weights(self):
        # mmseg's SwinTransformer.init_weights without a checkpoint: trunc-normal(.02) Linears
        # with zero biases, LayerNorms 1/0; it does not recurse into WindowMSA.init_weights, so
        # the relative position bias tables stay 0, and the patch conv keeps PyTorch's init
        for m in self.modules():
            init_linear_or_layernorm_(m)

    def forward(self, x):
        x, hw = self.patch_embed(x)
        x = self.drop_after_pos(x)
        outs = {}
        for i, stage in enumerate(self.stages[: self._num_run]):
            for block in stage.blocks:
                x = block(x, hw)
            name = f"swin{i + 1}"
            if name in self._out_features:
                # contiguous NCHW, as mmseg's: a head fed channels-last views pays a transposing
                # copy in UPerNet's concat of four 1/4-scale maps (~5% of a 512 x 512 forward)
                outs[name] = nlc_to_nchw(getattr(self, f"norm{i}")(x), hw).contiguous()
            if i + 1 < self._num_run:
                x, hw = stage.downsample(x, hw)
        return outs
    # output_shape: Detectron2's Backbone default, from _out_feature_channels/_strides


@BACKBONE_REGISTRY.register()
def build_swin_backbone(cfg, input_shape: ShapeSpec) -> SwinTransformer:
    """Swin from MODEL.SWIN (Swin-T by default; see configs/_base_/models/upernet_swin.yaml)."""
    # every MODEL.SWIN key is the lower-cased argument of the same name
    args = {k.lower(): v for k, v in cfg.MODEL.SWIN.items()}
    return SwinTransformer(in_channels=input_shape.channels, **args)
