"""Twins (mmseg's ``PCPVT`` and ``SVT``) as Detectron2 backbones with outputs ``twins1``..``twins4``
(strides 4, 8, 16, 32 with the default strides); both read MODEL.TWINS.

Module names and nesting are mmseg's, so an mmseg Twins checkpoint's backbone keys load
unchanged: ``patch_embeds.{i}.{projection,norm}``, ``position_encodings.{i}.proj`` (the PEG),
``layers.{i}.{j}`` with ``norm1``/``attn``/``norm2``/``ffn.layers.{0.0,1}`` (mmcv's FFN) and
``norm_list.{i}`` (``NORM_AFTER_STAGE``). A GSA layer's ``attn`` is MiT's efficient attention
(``attn.attn.in_proj_*``/``out_proj``, ``attn.sr``/``attn.norm``); an SVT LSA layer's (the even
blocks) has ``attn.qkv`` and ``attn.proj``.

Behaviour kept from mmseg 0.30 (mmseg/models/backbones/twins.py):
- every LayerNorm has eps 1e-5 (mmseg's ``LN`` default), also in the GSA's key/value reduction;
- the patch embedding zero-pads bottom/right to its stride (``AdaptivePadding('corner')``);
- the PEG (3x3 depthwise conv + residual) runs after the FIRST block of each stage;
- LSA pads the map to a multiple of the window; its mask has a bug (``mask[:, -pad_b:]`` with
  pad_b == 0 selects every row): padded tokens are masked (-1000) only when BOTH the bottom and
  the right pads are > 0, otherwise they take part in the attention unmasked;
- DropPath is applied twice on each branch: inside the attention / FFN (their
  ``dropout_layer``) and again around them (the layer's ``drop_path``). Kept: a branch is then
  dropped with probability 1 - (1 - p)^2 and, when kept, scaled by 1 / (1 - p)^2. It changes
  training only (eval and DROP_PATH_RATE 0 are unaffected).
"""
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...checkpoint.backbones import WeightFormat, register_weight_format
from ...config import register_config_keys
from ...export.tracing import is_exporting
from .mit import DropPath, EfficientMultiheadAttention, MixVisionTransformer, nlc_to_nchw
from .swin import FFN, corner_pad

__all__ = ["PCPVT", "SVT", "build_pcpvt_backbone", "build_svt_backbone",
           "convert_twins_official"]

LN_EPS = 1e-5  # mmseg's norm_cfg=dict(type='LN'): PyTorch's default
LSA_MASK_VALUE = -1000.0


@register_config_keys
def add_twins_keys(keys):
    # defaults: PCPVT-S (mmseg's configs/_base_/models/twins_pcpvt-s_upernet.py); SVT-S values
    # in comments (configs/twins/twins_svt-s_uperhead_8x2_512x512_160k_ade20k.py)
    keys.MODEL.TWINS = CN()
    keys.MODEL.TWINS.EMBED_DIMS = [64, 128, 320, 512]  # (SVT-S 64,128,256,512)
    keys.MODEL.TWINS.NUM_HEADS = [1, 2, 5, 8]  # (SVT-S 2,4,8,16)
    keys.MODEL.TWINS.PATCH_SIZES = [4, 2, 2, 2]  # patch embedding kernels (corner-padded)
    keys.MODEL.TWINS.STRIDES = [4, 2, 2, 2]
    keys.MODEL.TWINS.MLP_RATIOS = [8, 8, 4, 4]  # (SVT 4,4,4,4)
    keys.MODEL.TWINS.DEPTHS = [3, 4, 6, 3]  # (SVT-S 2,2,10,4)
    keys.MODEL.TWINS.SR_RATIOS = [8, 4, 2, 1]  # GSA key/value reduction
    keys.MODEL.TWINS.WINDOW_SIZES = [7, 7, 7, 7]  # SVT's LSA windows (mmseg's `windiow_sizes`)
    keys.MODEL.TWINS.QKV_BIAS = True
    keys.MODEL.TWINS.DROP_RATE = 0.0
    keys.MODEL.TWINS.ATTN_DROP_RATE = 0.0
    keys.MODEL.TWINS.DROP_PATH_RATE = 0.2  # linear from 0 over all blocks
    keys.MODEL.TWINS.NORM_AFTER_STAGE = False  # a LayerNorm at the end of each stage (SVT: True)
    keys.MODEL.TWINS.OUT_FEATURES = ["twins1", "twins2", "twins3", "twins4"]


class PatchEmbed(nn.Module):
    """``kernel`` x ``kernel`` / ``stride`` conv on the corner-padded input -> LayerNorm."""

    def __init__(self, in_channels: int, embed_dims: int, kernel: int, stride: int):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel, stride)
        self.norm = nn.LayerNorm(embed_dims, eps=LN_EPS)

    def forward(self, x):
        x = self.projection(corner_pad(x, self.kernel, self.stride))
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class GlobalSubsampledAttention(EfficientMultiheadAttention):
    """GSA: MiT's efficient attention (mmseg builds it from the same class), with Twins' LN
    eps in the key/value reduction."""

    def __init__(self, embed_dims, num_heads, attn_drop, proj_drop, drop_path, qkv_bias,
                 sr_ratio):
        super().__init__(embed_dims, num_heads, attn_drop, proj_drop, drop_path, qkv_bias,
                         sr_ratio)
        if sr_ratio > 1:
            self.norm.eps = LN_EPS


class GSAEncoderLayer(nn.Module):
    def __init__(self, embed_dims, num_heads, hidden, drop_rate, attn_drop_rate, drop_path_rate,
                 qkv_bias, sr_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.attn = GlobalSubsampledAttention(embed_dims, num_heads, attn_drop_rate, drop_rate,
                                              drop_path_rate, qkv_bias, sr_ratio)
        self.norm2 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.ffn = FFN(embed_dims, hidden, drop_rate, drop_path_rate)
        self.drop_path = DropPath(drop_path_rate)  # the second DropPath (see the module doc)

    def forward(self, x, hw):
        x = x + self.drop_path(self.attn(self.norm1(x), hw, identity=0.0))
        return x + self.drop_path(self.ffn(self.norm2(x), identity=0.0))


class LocallyGroupedSelfAttention(nn.Module):
    """LSA: multi-head self-attention inside non-overlapping windows of the (padded) map."""

    def __init__(self, embed_dims, num_heads, qkv_bias, attn_drop, proj_drop, window_size):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)  # (always with bias, as mmseg)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, hw):
        b, n, c = x.shape
        h, w = hw
        ws = self.window_size
        x = x.view(b, h, w, c)
        pad_r = (ws - w % ws) % ws
        pad_b = (ws - h % ws) % ws
        padded = is_exporting() or pad_r > 0 or pad_b > 0
        if padded:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = x.shape[1], x.shape[2]
        nh, nw = hp // ws, wp // ws
        mask = None
        if padded:
            # mmseg's mask with its bug, as tensors (traced for any size): the padded rows and
            # columns, used only when both pads are non-zero
            rows = torch.arange(hp, device=x.device) >= h
            cols = torch.arange(wp, device=x.device) >= w
            pad = (rows[:, None] | cols[None, :]) & (rows.any() & cols.any())
            pad = pad.reshape(nh, ws, nw, ws).transpose(1, 2).reshape(nh * nw, ws * ws)
            mask = (pad[:, None, :] != pad[:, :, None]).to(x.dtype) * LSA_MASK_VALUE
            mask = mask[None, :, None].expand(b, -1, -1, -1, -1).reshape(
                b * nh * nw, 1, ws * ws, ws * ws)
        x = x.reshape(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        q, k, v = self.qkv(x).reshape(b * nh * nw, ws * ws, 3, self.num_heads, -1).permute(
            2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(
            b, hp, wp, c)
        if padded:
            x = x[:, :h, :w, :]
        return self.proj_drop(self.proj(x.reshape(b, n, c)))


class LSAEncoderLayer(nn.Module):
    def __init__(self, embed_dims, num_heads, hidden, drop_rate, attn_drop_rate, drop_path_rate,
                 qkv_bias, window_size):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.attn = LocallyGroupedSelfAttention(embed_dims, num_heads, qkv_bias, attn_drop_rate,
                                                drop_rate, window_size)
        self.norm2 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.ffn = FFN(embed_dims, hidden, drop_rate, drop_path_rate)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x, hw):
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.ffn(self.norm2(x), identity=0.0))


class ConditionalPositionEncoding(nn.Module):
    """The PEG: 3x3 depthwise conv of the token map, plus the map."""

    def __init__(self, embed_dims: int):
        super().__init__()
        self.proj = nn.Conv2d(embed_dims, embed_dims, 3, 1, 1, groups=embed_dims)

    def forward(self, x, hw):
        x = nlc_to_nchw(x, hw)
        return (self.proj(x) + x).flatten(2).transpose(1, 2)


class PCPVT(Backbone):
    """Stages of (patch embedding -> GSA layers, the PEG after the first -> [LayerNorm])."""

    _key = "MODEL.TWINS"

    def __init__(
        self,
        *,
        in_channels: int = 3,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        patch_sizes: Sequence[int] = (4, 2, 2, 2),
        strides: Sequence[int] = (4, 2, 2, 2),
        mlp_ratios: Sequence[int] = (8, 8, 4, 4),
        depths: Sequence[int] = (3, 4, 6, 3),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        norm_after_stage: bool = False,
        out_features: Sequence[str] = ("twins1", "twins2", "twins3", "twins4"),
        window_sizes: Sequence[int] = (),
    ):
        super().__init__()
        lists = dict(EMBED_DIMS=embed_dims, NUM_HEADS=num_heads, PATCH_SIZES=patch_sizes,
                     STRIDES=strides, MLP_RATIOS=mlp_ratios, DEPTHS=depths, SR_RATIOS=sr_ratios)
        if window_sizes:
            lists["WINDOW_SIZES"] = window_sizes
        if len({len(v) for v in lists.values()}) != 1:
            raise ValueError(f"{self._key}: " + ", ".join(lists) + " need one value per stage, "
                             "got " + ", ".join(f"{k}={list(v)}" for k, v in lists.items()))
        bad = [f"{d} / {h}" for d, h in zip(embed_dims, num_heads) if h < 1 or d % h]
        if bad:
            raise ValueError(f"{self._key}: each stage's EMBED_DIMS {list(embed_dims)} must be a "
                             f"multiple of its NUM_HEADS {list(num_heads)}; not: {bad}")
        for key, values in lists.items():
            if key not in ("EMBED_DIMS", "NUM_HEADS", "DEPTHS") and min(values) < 1:
                raise ValueError(f"{self._key}.{key} must be >= 1, got {list(values)}")
        if min(depths) < 1:  # the PEG follows each stage's first block
            raise ValueError(f"{self._key}.DEPTHS must be >= 1 per stage, got {list(depths)}")
        names = [f"twins{i + 1}" for i in range(len(depths))]
        unknown = [f for f in out_features if f not in names]
        if unknown or not out_features:
            raise ValueError(f"Twins OUT_FEATURES {list(out_features)}: {unknown or 'none'} not "
                             f"among {names}")
        # stochastic depth grows linearly over all blocks, as mmseg's (CPU: values read back)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.patch_embeds = nn.ModuleList()
        self.position_encoding_drops = nn.ModuleList()
        self.layers = nn.ModuleList()
        self._out_feature_channels, self._out_feature_strides = {}, {}
        stride = 1
        for i, dims in enumerate(embed_dims):
            self.patch_embeds.append(PatchEmbed(in_channels if i == 0 else embed_dims[i - 1],
                                                dims, patch_sizes[i], strides[i]))
            self.position_encoding_drops.append(nn.Dropout(drop_rate))
            first = sum(depths[:i])
            self.layers.append(nn.ModuleList(
                self._layer(i, j, dims, num_heads[i], mlp_ratios[i] * dims, drop_rate,
                            attn_drop_rate, dpr[first + j], qkv_bias, sr_ratios[i],
                            window_sizes[i] if window_sizes else 0)
                for j in range(depths[i])))
            stride *= strides[i]
            self._out_feature_channels[names[i]] = dims
            self._out_feature_strides[names[i]] = stride
        self.position_encodings = nn.ModuleList(ConditionalPositionEncoding(d)
                                                for d in embed_dims)
        self.norm_after_stage = norm_after_stage
        if norm_after_stage:
            self.norm_list = nn.ModuleList(nn.LayerNorm(d, eps=LN_EPS) for d in embed_dims)
        self._out_features = [f for f in names if f in out_features]
        # the last stage that is an output: later ones are not run
        self._num_run = max(names.index(f) for f in self._out_features) + 1
        # mmseg's PCPVT.init_weights without a checkpoint is MiT's: trunc-normal(.02) Linears,
        # LayerNorms 1/0, convs normal(sqrt(2 / fan_out)) with zero bias, in_proj xavier
        MixVisionTransformer._init_weights(self)

    def _layer(self, stage, j, dims, heads, hidden, drop, attn_drop, drop_path, qkv_bias, sr,
               window):
        return GSAEncoderLayer(dims, heads, hidden, drop, attn_drop, drop_path, qkv_bias, sr)

    def forward(self, x):
        outs = {}
        for i in range(self._num_run):
            x, hw = self.patch_embeds[i](x)
            x = self.position_encoding_drops[i](x)
            for j, block in enumerate(self.layers[i]):
                x = block(x, hw)
                if j == 0:
                    x = self.position_encodings[i](x, hw)
            if self.norm_after_stage:
                x = self.norm_list[i](x)
            x = nlc_to_nchw(x, hw)
            if f"twins{i + 1}" in self._out_features:
                outs[f"twins{i + 1}"] = x
        return outs
    # output_shape: Detectron2's Backbone default, from _out_feature_channels/_strides


class SVT(PCPVT):
    """PCPVT whose even blocks (0, 2, ...) of each stage are LSA layers, the odd ones GSA."""

    def __init__(self, *, window_sizes: Sequence[int] = (7, 7, 7, 7), **kwargs):
        if not window_sizes:
            raise ValueError(f"{self._key}.WINDOW_SIZES: SVT needs one window size per stage")
        super().__init__(window_sizes=window_sizes, **kwargs)

    def _layer(self, stage, j, dims, heads, hidden, drop, attn_drop, drop_path, qkv_bias, sr,
               window):
        if j % 2:
            return super()._layer(stage, j, dims, heads, hidden, drop, attn_drop, drop_path,
                                  qkv_bias, sr, window)
        return LSAEncoderLayer(dims, heads, hidden, drop, attn_drop, drop_path, qkv_bias, window)


def _twins_args(cfg):
    # every MODEL.TWINS key is the lower-cased argument of the same name
    return {k.lower(): v for k, v in cfg.MODEL.TWINS.items()}


@BACKBONE_REGISTRY.register()
def build_pcpvt_backbone(cfg, input_shape: ShapeSpec) -> PCPVT:
    """Twins-PCPVT from MODEL.TWINS (PCPVT-S by default; configs/_base_/models/
    twins_pcpvt-s_upernet.yaml). MODEL.TWINS.WINDOW_SIZES is SVT's: not used."""
    args = _twins_args(cfg)
    args.pop("window_sizes")
    return PCPVT(in_channels=input_shape.channels, **args)


@BACKBONE_REGISTRY.register()
def build_svt_backbone(cfg, input_shape: ShapeSpec) -> SVT:
    """Twins-SVT (alternating LSA / GSA layers) from MODEL.TWINS."""
    return SVT(in_channels=input_shape.channels, **_twins_args(cfg))


def convert_twins_official(sd):
    """Official Twins ImageNet keys (``pcpvt_*.pth``, ``alt_gvt_*.pth``) -> mmseg's, as mmseg's
    tools/model_converters/twins2mmseg.py: GSA ``attn.q`` + ``attn.kv`` -> ``attn.attn.in_proj_*``,
    the GSA ``attn.proj`` -> ``attn.attn.out_proj`` (SVT's LSA blocks, the even ones, keep
    ``attn.qkv``/``attn.proj``), ``mlp.fc1``/``fc2`` -> ``ffn.layers.0.0``/``1``, ``blocks`` ->
    ``layers``, ``pos_block.{i}.proj.0`` -> ``position_encodings.{i}.proj``, ``patch_embeds``'
    ``proj`` -> ``projection``. Other keys (``norm``, ``head``) pass through for the caller."""
    svt = any(".attn.qkv." in k for k in sd)  # the tool's `model` argument, read from the keys
    out = {}
    for k, v in sd.items():
        new = k
        if k.startswith("patch_embeds"):
            new = k.replace("proj.", "projection.")
        elif k.startswith("blocks"):
            if ".attn.kv." in k:  # packed with q
                continue
            if ".attn.q." in k:
                kv = k.replace(".attn.q.", ".attn.kv.")
                if kv not in sd:
                    raise ValueError(f"Twins checkpoint: {k} has no matching {kv}")
                new, v = k.replace(".attn.q.", ".attn.attn.in_proj_"), torch.cat([v, sd[kv]])
            elif ".mlp.fc1." in k:
                new = k.replace(".mlp.fc1.", ".ffn.layers.0.0.")
            elif ".mlp.fc2." in k:
                new = k.replace(".mlp.fc2.", ".ffn.layers.1.")
            elif ".attn.proj." in k and not (svt and int(k.split(".")[2]) % 2 == 0):
                new = k.replace(".attn.proj.", ".attn.attn.out_proj.")
            new = new.replace("blocks.", "layers.", 1)
        elif k.startswith("pos_block"):
            new = k.replace("pos_block", "position_encodings", 1).replace(".proj.0.", ".proj.")
        out[new] = v
    return out


# the ImageNet classifier's final LayerNorm (both layouts: twins2mmseg keeps it)
_TWINS_UNUSED = re.compile(r"^norm\.(weight|bias)$")
# SVT's norm_list is not in ImageNet weights: it keeps its LayerNorm 1/0 init, as in mmseg
_TWINS_FILLS = ("backbone.patch_embeds.", "backbone.layers.", "backbone.position_encodings.")
register_weight_format(WeightFormat(
    "twins_official", "Twins PCPVT/SVT (official)",
    lambda sd: "patch_embeds.0.proj.weight" in sd and any(k.startswith("pos_block.") for k in sd),
    convert=convert_twins_official, unused=_TWINS_UNUSED, fills=_TWINS_FILLS))
register_weight_format(WeightFormat(
    "twins", "Twins PCPVT/SVT (mmseg)",
    lambda sd: "patch_embeds.0.projection.weight" in sd
    and any(k.startswith("position_encodings.") for k in sd),
    unused=_TWINS_UNUSED, fills=_TWINS_FILLS))
