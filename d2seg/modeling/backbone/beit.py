"""BEiT and MAE (mmseg's ``BEiT`` and ``MAE``) as Detectron2 backbones: a plain ViT whose
outputs are the token maps (stride = patch size) after the layers in ``OUT_INDICES``, named
``beit{i}`` / ``mae{i}`` after mmseg's layer index ``i`` (``layers.{i}``).

Module names are mmseg's, so mmseg checkpoints load unchanged: ``cls_token`` (MAE also
``pos_embed``), ``patch_embed.projection`` (+ ``patch_embed.norm`` with PATCH_NORM),
``layers.{i}`` with ``ln1``, ``attn.{q_bias,v_bias,relative_position_bias_table,
relative_position_index,qkv,proj}``, ``ln2``, ``ffn.layers.{0.0,1}``, ``gamma_1``/``gamma_2``;
``ln1`` the final norm (FINAL_NORM).

Behaviour kept from mmseg:
- every layer has its own relative position bias table of (2Wh-1)(2Ww-1) + 3 entries (the 3 for
  cls->token, token->cls, cls->cls), for a window fixed at build time to IMG_SIZE // PATCH_SIZE:
  the input's patch grid must be that window (any other input is an error here, a shape
  mismatch deep inside mmseg); MAE also adds its absolute ``pos_embed`` without resizing;
- the patch embedding has no padding (a 16 x 16 / 16 conv drops the last H % 16 rows);
- BEiT: q and v biases, k's is zero (``qv_bias``); MAE: a full qkv bias;
- x + DropPath(gamma_1 * attn(ln1(x))), then x + DropPath(gamma_2 * ffn(ln2(x))): DropPath on
  both branches, layer scale ``gamma`` initialised to INIT_VALUES;
- mmseg's attention dropout is always 0 (its ``attn_drop_rate`` reaches BEiTAttention under
  another keyword and is dropped), so there is no key for it;
- attention is softmax(q k^T * scale + bias) v, run by ``F.scaled_dot_product_attention`` with
  the bias as its float ``attn_mask``.

ImageNet weights (unilm BEiT / MAE files, converted as mmseg's beit2mmseg.py, and mmseg's
converted files) are registered at the end of this module; their relative position tables and
MAE's ``pos_embed`` are resized to the model's window when loaded (``fit``), as mmseg's
``resize_rel_pos_embed`` / ``resize_abs_pos_embed`` do at its ImageNet init.
"""
import logging
import math
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...checkpoint.backbones import WeightFormat, backbone_weights_prefix, register_weight_format
from ...config import register_config_keys
from .mit import DropPath, nchw_to_nlc
from .swin import FFN
from .vit import resize_pos_embed

__all__ = ["BEiT", "MAE", "build_beit_backbone", "build_mae_backbone", "geometric_offsets",
           "geometric_sequence_interpolation", "convert_beit_official"]

logger = logging.getLogger(__name__)

LN_EPS = 1e-6  # mmseg's configs: norm_cfg=dict(type='LN', eps=1e-6)


@register_config_keys
def add_beit_keys(keys):
    # read by both build_beit_backbone and build_mae_backbone (mmseg's MAE is a BEiT subclass)
    keys.MODEL.BEIT = CN()
    keys.MODEL.BEIT.IMG_SIZE = [640, 640]  # fixes the window (IMG_SIZE // PATCH_SIZE); MAE 512
    keys.MODEL.BEIT.PATCH_SIZE = 16
    keys.MODEL.BEIT.EMBED_DIMS = 768  # L: 1024
    keys.MODEL.BEIT.NUM_LAYERS = 12  # L: 24
    keys.MODEL.BEIT.NUM_HEADS = 12  # L: 16
    keys.MODEL.BEIT.MLP_RATIO = 4
    keys.MODEL.BEIT.OUT_INDICES = [3, 5, 7, 11]  # mmseg's out_indices (L: 7, 11, 15, 23)
    keys.MODEL.BEIT.QV_BIAS = True  # BEiT only (MAE always has a full qkv bias)
    keys.MODEL.BEIT.DROP_PATH_RATE = 0.1  # linear from 0 over the layers (L: 0.2)
    keys.MODEL.BEIT.INIT_VALUES = 0.1  # layer scale gamma's init (L: 1e-6, MAE: 1.0)
    keys.MODEL.BEIT.PATCH_NORM = False  # LayerNorm after the patch embedding
    keys.MODEL.BEIT.FINAL_NORM = False  # LayerNorm ``ln1`` after the last layer


def relative_position_index(wh: int, ww: int) -> torch.Tensor:
    """(Wh*Ww + 1)^2 index into the per-layer table, mmseg's construction: token pairs by their
    offset, then the cls row/column/corner on the 3 extra entries (on the CPU, so that a model
    built on the meta device gets real values)."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh, device="cpu"),
                                        torch.arange(ww, device="cpu"), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = (rel[..., 0] + wh - 1) * (2 * ww - 1) + rel[..., 1] + ww - 1
    num = (2 * wh - 1) * (2 * ww - 1) + 3
    index = torch.zeros((wh * ww + 1,) * 2, dtype=rel.dtype)
    index[1:, 1:] = rel
    index[0, 0:] = num - 3
    index[0:, 0] = num - 2
    index[0, 0] = num - 1
    return index


class BEiTAttention(nn.Module):
    def __init__(self, embed_dims: int, num_heads: int, window_size: Tuple[int, int],
                 qv_bias: bool, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (embed_dims // num_heads) ** -0.5
        if qv_bias:  # k's bias is a constant 0
            self.q_bias = nn.Parameter(torch.zeros(embed_dims))
            self.v_bias = nn.Parameter(torch.zeros(embed_dims))
        else:
            self.q_bias = self.v_bias = None
        wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wh - 1) * (2 * ww - 1) + 3, num_heads))
        # persistent, as in mmseg: its checkpoints carry it
        self.register_buffer("relative_position_index", relative_position_index(wh, ww))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias and not qv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x):
        b, n, c = x.shape
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            qkv = F.linear(x, self.qkv.weight, bias)
        else:
            qkv = self.qkv(x)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn_mask = bias.view(n, n, -1).permute(2, 0, 1)  # heads x N x N
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype),
                                             scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class BEiTTransformerEncoderLayer(nn.Module):
    def __init__(self, embed_dims, num_heads, hidden, window_size, qv_bias, qkv_bias, drop_path,
                 init_values):
        super().__init__()
        self.ln1 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.attn = BEiTAttention(embed_dims, num_heads, window_size, qv_bias, qkv_bias)
        self.ln2 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.ffn = FFN(embed_dims, hidden, 0.0, 0.0)  # only its ``layers`` run (no identity)
        self.drop_path = DropPath(drop_path)
        self.gamma_1 = nn.Parameter(init_values * torch.ones(embed_dims))
        self.gamma_2 = nn.Parameter(init_values * torch.ones(embed_dims))

    def forward(self, x):
        x = x + self.drop_path(self.gamma_1 * self.attn(self.ln1(x)))
        return x + self.drop_path(self.gamma_2 * self.ffn.layers(self.ln2(x)))


class PatchEmbed(nn.Module):
    """mmcv's PatchEmbed with padding 0: a patch x patch / patch conv (+ LayerNorm)."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int, norm: bool):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, patch_size)
        self.norm = nn.LayerNorm(embed_dims, eps=LN_EPS) if norm else None

    def forward(self, x):
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        x = nchw_to_nlc(x)
        return (x if self.norm is None else self.norm(x)), hw


def _pair(value, key: str) -> Tuple[int, int]:
    v = [value] if isinstance(value, int) else list(value)
    if len(v) == 1:
        v = v * 2
    if len(v) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0
                              for i in v):
        raise ValueError(f"{key}={value!r}: expected one or two positive ints (H, W)")
    return v[0], v[1]


class BEiT(Backbone):
    """mmseg's ``BEiT``; ``forward`` takes N x 3 x H x W with H // PATCH_SIZE, W // PATCH_SIZE
    equal to the window IMG_SIZE // PATCH_SIZE and returns the maps of ``out_features``."""

    _prefix = "beit"
    _key = "MODEL.BEIT"
    _full_qkv_bias = False  # MAE: qkv has a bias (and no q_bias / v_bias)

    def __init__(
        self,
        *,
        in_channels: int = 3,
        img_size: Sequence[int] = (640, 640),
        patch_size: int = 16,
        embed_dims: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_ratio: int = 4,
        out_indices: Sequence[int] = (3, 5, 7, 11),
        qv_bias: bool = True,
        drop_path_rate: float = 0.1,
        init_values: float = 0.1,
        patch_norm: bool = False,
        final_norm: bool = False,
    ):
        super().__init__()
        key = self._key
        self.img_size = _pair(img_size, f"{key}.IMG_SIZE")
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"{key}.PATCH_SIZE={patch_size!r}: expected an int >= 1")
        window = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        if min(window) < 1:
            raise ValueError(f"{key}.IMG_SIZE={list(img_size)} is smaller than "
                             f"{key}.PATCH_SIZE={patch_size}")
        if embed_dims % num_heads:
            raise ValueError(f"{key}.EMBED_DIMS={embed_dims} is not a multiple of "
                             f"{key}.NUM_HEADS={num_heads}")
        bad = [i for i in out_indices if not 0 <= i < num_layers]
        if bad or not out_indices:
            raise ValueError(f"{key}.OUT_INDICES={list(out_indices)}: {bad or 'none'} not "
                             f"among the layers 0..{num_layers - 1} (NUM_LAYERS={num_layers})")
        self.patch_size = patch_size
        self.window_size = window
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, patch_norm)
        dpr = torch.linspace(0, drop_path_rate, num_layers, device="cpu").tolist()
        qv = qv_bias and not self._full_qkv_bias
        self.layers = nn.ModuleList(
            BEiTTransformerEncoderLayer(embed_dims, num_heads, int(mlp_ratio * embed_dims), window,
                                        qv, self._full_qkv_bias, dpr[i], init_values)
            for i in range(num_layers))
        self.ln1 = nn.LayerNorm(embed_dims, eps=LN_EPS) if final_norm else None
        self.out_indices = sorted(set(out_indices))
        self._out_features = [f"{self._prefix}{i}" for i in self.out_indices]
        self._out_feature_channels = {f: embed_dims for f in self._out_features}
        self._out_feature_strides = {f: patch_size for f in self._out_features}
        self._init_weights()

    def _init_weights(self):
        # mmseg's BEiT.init_weights without a checkpoint, in its order (so that one seed gives
        # mmseg's tensors): Linears trunc-normal(.02) / bias 0 and LayerNorms 1/0, then again
        # the cls token, Linears (biases 0, N(0, 1e-6) inside ``ffn``), Kaiming fan-in convs and
        # norms; it does not call BEiTAttention.init_weights, so the bias tables stay 0
        for m in self.modules():
            _linear_or_ln_(m)
        self._after_first_init_pass()
        trunc_normal_(self.cls_token, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    if "ffn" in name:
                        nn.init.normal_(m.bias, mean=0.0, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _after_first_init_pass(self):
        pass

    def _check_grid(self, hw, size):
        # (a traced export has the sample's constant sizes: nothing to check there)
        if not torch.jit.is_tracing() and tuple(hw) != self.window_size:
            lo = [w * self.patch_size for w in self.window_size]
            raise ValueError(
                f"{type(self).__name__}: input {tuple(size)} gives a {tuple(hw)} patch grid, but "
                f"{self._key}.IMG_SIZE={list(self.img_size)} with PATCH_SIZE={self.patch_size} "
                f"fixes it to {self.window_size} (the relative position bias"
                f"{' and pos_embed are' if self._full_qkv_bias else ' is'} built for that "
                f"window): inputs must be {lo[0]}..{lo[0] + self.patch_size - 1} x "
                f"{lo[1]}..{lo[1] + self.patch_size - 1} pixels (crop / slide at IMG_SIZE)")

    def _add_pos(self, x):
        return x

    def adapt_imagenet_weights(self, sd: Dict[str, torch.Tensor], fmt: str):
        """SegCheckpointer's hook for ImageNet weights (``backbone.*`` keys): the resizes of
        :meth:`adapt_pretrained_state`. Returns (weights, dropped keys, the model keys filled)."""
        sd = dict(sd)
        return sd, self.adapt_pretrained_state(sd, "backbone."), backbone_weights_prefix(fmt)

    def adapt_pretrained_state(self, sd: Dict[str, torch.Tensor], prefix: str) -> List[str]:
        """Called by SegCheckpointer on ImageNet backbone weights before its shape check, as
        mmseg's resize_rel_pos_embed at its ImageNet init: each layer's bias table of another
        (square) window is resized by geometric_sequence_interpolation, the 3 extra entries
        kept. Drops nothing."""
        for i, layer in enumerate(self.layers):
            key = f"{prefix}layers.{i}.attn.relative_position_bias_table"
            own = layer.attn.relative_position_bias_table
            if key not in sd or sd[key].shape == own.shape:
                continue
            src = int((sd[key].shape[0] - 3) ** 0.5)
            dst = self.window_size[0]
            if (sd[key].dim() != 2 or src * src + 3 != sd[key].shape[0]
                    or sd[key].shape[1] != own.shape[1] or self.window_size[1] != dst):
                raise ValueError(
                    f"{key} of shape {tuple(sd[key].shape)}: cannot resize it to "
                    f"{tuple(own.shape)} (mmseg resizes tables of S*S + 3 x heads to a square "
                    f"window only; {self._key}.IMG_SIZE={list(self.img_size)})")
            logger.info(f"Resizing {key} from window {src // 2 + 1} to {dst} (geometric "
                        "sequence, bicubic spline)")
            table = sd[key]
            sd[key] = torch.cat((geometric_sequence_interpolation(table[:-3], src, 2 * dst - 1),
                                 table[-3:]), dim=0)
        return []

    def forward(self, x):
        size = x.shape[-2:]
        x, hw = self.patch_embed(x)
        self._check_grid(hw, size)
        x = self._add_pos(torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1))
        outs = {}
        for i, layer in enumerate(self.layers[: self.out_indices[-1] + 1]):
            x = layer(x)
            if self.ln1 is not None and i == len(self.layers) - 1:
                x = self.ln1(x)
            if i in self.out_indices:
                out = x[:, 1:]
                outs[f"{self._prefix}{i}"] = out.transpose(1, 2).reshape(
                    out.shape[0], out.shape[2], hw[0], hw[1]).contiguous()  # NCHW, as mmseg's
        return outs
    # output_shape: Detectron2's Backbone default, from _out_feature_channels/_strides


@torch.no_grad()
def trunc_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    """mmcv's trunc_normal_(mean 0, bounds +-2): the inverse-CDF draw of a uniform sample, so one
    seed gives mmseg's tensors (torch's own trunc_normal_ draws differently)."""
    lo, hi = (1.0 + math.erf(-2.0 / std / math.sqrt(2.0))) / 2.0, (
        1.0 + math.erf(2.0 / std / math.sqrt(2.0))) / 2.0
    t.uniform_(2 * lo - 1, 2 * hi - 1).erfinv_().mul_(std * math.sqrt(2.0))
    return t.clamp_(min=-2.0, max=2.0)


def _linear_or_ln_(m: nn.Module):
    """The first pass of mmseg's BEiT/MAE init (its ``_init_weights``)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.zeros_(m.bias)
        nn.init.ones_(m.weight)


class MAE(BEiT):
    """mmseg's ``MAE``: BEiT with a full qkv bias and an absolute ``pos_embed`` (zeros until
    loaded) added to the cls + patch tokens; its bias tables are zero-initialised too."""

    _prefix = "mae"
    _full_qkv_bias = True

    def __init__(self, *, embed_dims: int = 768, init_values: float = 1.0, **kwargs):
        super().__init__(embed_dims=embed_dims, init_values=init_values, **kwargs)
        n = self.window_size[0] * self.window_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dims))

    def _after_first_init_pass(self):
        # mmseg's fix_init_weight (undone by the second pass when there is no checkpoint, but
        # part of its order); with a checkpoint it rescales what the checkpoint lacks
        for i, layer in enumerate(self.layers):
            layer.attn.proj.weight.data.div_(math.sqrt(2.0 * (i + 1)))
            layer.ffn.layers[1].weight.data.div_(math.sqrt(2.0 * (i + 1)))

    def _add_pos(self, x):
        return x + self.pos_embed

    def adapt_pretrained_state(self, sd: Dict[str, torch.Tensor], prefix: str) -> List[str]:
        """BEiT's, plus mmseg's MAE.resize_abs_pos_embed: a ``pos_embed`` of another square grid
        bicubic-resized (align_corners False), the cls slot kept."""
        key = prefix + "pos_embed"
        if key in sd and sd[key].shape != self.pos_embed.shape:
            v = sd[key]
            side = int((v.shape[1] - 1) ** 0.5)
            if (v.dim() != 3 or side * side + 1 != v.shape[1]
                    or v.shape[2] != self.pos_embed.shape[2]
                    or self.window_size[0] != self.window_size[1]):
                raise ValueError(f"{key} of shape {tuple(v.shape)}: cannot resize it to "
                                 f"{tuple(self.pos_embed.shape)} (mmseg resizes square grids "
                                 f"only; {self._key}.IMG_SIZE={list(self.img_size)})")
            logger.info(f"Resizing {key} from {side}x{side} to {self.window_size} (bicubic)")
            sd[key] = resize_pos_embed(v.float(), self.window_size, (side, side),
                                       "bicubic").to(v.dtype)
        return super().adapt_pretrained_state(sd, prefix)


def _backbone_args(cfg, cls):
    c = cfg.MODEL.BEIT
    return dict(img_size=c.IMG_SIZE, patch_size=c.PATCH_SIZE, embed_dims=c.EMBED_DIMS,
                num_layers=c.NUM_LAYERS, num_heads=c.NUM_HEADS, mlp_ratio=c.MLP_RATIO,
                out_indices=c.OUT_INDICES, drop_path_rate=c.DROP_PATH_RATE,
                init_values=c.INIT_VALUES, patch_norm=c.PATCH_NORM, final_norm=c.FINAL_NORM,
                **({} if cls is MAE else {"qv_bias": c.QV_BIAS}))


@BACKBONE_REGISTRY.register()
def build_beit_backbone(cfg, input_shape: ShapeSpec) -> BEiT:
    """BEiT from MODEL.BEIT (BEiT-B at 640 by default; configs/_base_/models/upernet_beit.yaml)."""
    return BEiT(in_channels=input_shape.channels, **_backbone_args(cfg, BEiT))


@BACKBONE_REGISTRY.register()
def build_mae_backbone(cfg, input_shape: ShapeSpec) -> MAE:
    """MAE from MODEL.BEIT (QV_BIAS is not read); configs/_base_/models/upernet_mae.yaml."""
    return MAE(in_channels=input_shape.channels, **_backbone_args(cfg, MAE))


# ---- ImageNet weights ------------------------------------------------------------------------

def geometric_offsets(src: int, dst: int) -> Tuple[np.ndarray, np.ndarray]:
    """mmseg's placement of a src-wide table's offsets for a dst-wide one: the source offsets
    on a geometric sequence 0, 1, 1 + q, 1 + q + q^2, ... (both ways; q found by bisection so
    that it reaches about dst // 2, the last midpoint used), and the integer target offsets."""

    def geometric_progression(a, r, n):
        return a * (1.0 - r ** n) / (1.0 - r)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if geometric_progression(1, q, src // 2) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    x = np.array([-d for d in reversed(dis)] + [0] + dis, dtype=np.float64)
    t = dst // 2.0
    return x, np.arange(-t, t + 0.1, 1.0)


def geometric_sequence_interpolation(table: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    """A src x src relative position bias grid (src*src x heads, extra tokens removed) -> dst x
    dst, as mmseg's BEiT._geometric_sequence_interpolation: each head's values at
    geometric_offsets are resampled at the integer offsets by a bicubic interpolating spline.
    mmseg calls scipy's interp2d(kind='cubic'), removed in SciPy 1.14; on a grid that is
    FITPACK's regrid with s=0, as RectBivariateSpline(kx=ky=3, s=0) here (measured against
    SciPy 1.13's interp2d: relative difference <= 1e-15)."""
    from scipy.interpolate import RectBivariateSpline

    x, dx = geometric_offsets(src, dst)
    heads = []
    for h in range(table.shape[1]):
        z = table[:, h].view(src, src).float().numpy().astype(np.float64)
        # interp2d(x, y, z)(dx, dy) with rows of z along y: here x and y are the same grid,
        # so RectBivariateSpline(rows, cols, z)(rows', cols') is the same call
        f = RectBivariateSpline(x, x, z, kx=3, ky=3, s=0)
        heads.append(torch.from_numpy(f(dx, dx).astype(np.float32)).reshape(-1, 1))
    return torch.cat(heads, dim=-1).to(table)


def convert_beit_official(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """unilm BEiT / MAE (timm ViT) keys -> mmseg's, as mmseg's beit2mmseg.py: ``blocks`` ->
    ``layers`` (``norm`` -> ``ln``, ``mlp.fc1`` / ``mlp.fc2`` -> ``ffn.layers.0.0`` / ``.1``),
    ``patch_embed.proj`` -> ``patch_embed.projection``; other keys unchanged."""
    out = {}
    for k, v in sd.items():
        if k.startswith("blocks"):
            k = k.replace("blocks", "layers")
            if "norm" in k:
                k = k.replace("norm", "ln")
            elif "mlp.fc1" in k:
                k = k.replace("mlp.fc1", "ffn.layers.0.0")
            elif "mlp.fc2" in k:
                k = k.replace("mlp.fc2", "ffn.layers.1")
        elif k.startswith("patch_embed"):
            k = k.replace("patch_embed.proj", "patch_embed.projection")
        out[k] = v
    return out


def _fills(*parts, tokens=("cls_token",)):
    # the model keys ImageNet weights fill (the rest keeps its init, as with mmseg's non-strict
    # load): the relative_position_index buffers are the model's own (mmseg drops the file's)
    layers = tuple(f"backbone.layers.{i}.{p}" for i in range(64) for p in parts)
    return tuple(f"backbone.{t}" for t in tokens) + ("backbone.patch_embed.",) + layers


_COMMON = ("ln1.", "ln2.", "ffn.", "attn.qkv.", "attn.proj.")
# pretraining / classification parts the segmentation backbone has no use for (the ImageNet
# model's final ``norm`` / ``fc_norm``, BEiT's masked-image-modelling ``mask_token``)
_UNUSED = re.compile(r"^((norm|fc_norm|lm_head)\..*|mask_token|.*\.relative_position_index)$")
_BEIT_FILLS = _fills(*_COMMON, "gamma_1", "gamma_2", "attn.q_bias", "attn.v_bias",
                     "attn.relative_position_bias_table")
# MAE files have neither layer scale nor bias tables: gamma stays 1.0, the tables 0
_MAE_FILLS = _fills(*_COMMON, tokens=("cls_token", "pos_embed"))


def _is_beit(sd, blocks):
    return f"{blocks}.0.attn.q_bias" in sd and f"{blocks}.0.attn.relative_position_bias_table" in sd


def _is_mae(sd, blocks):
    # (a timm ViT file has the same keys: tried first only for BEiT/MAE models, _MODEL_HAS)
    return f"{blocks}.0.attn.qkv.bias" in sd and "pos_embed" in sd and "cls_token" in sd


# these layouts are for models with BEiT's bias tables (MAE's file is a timm ViT's)
_MODEL_HAS = "backbone.layers.0.attn.relative_position_bias_table"


for _fmt in (
    WeightFormat("beit_official", "BEiT (unilm)", lambda sd: _is_beit(sd, "blocks"),
                 convert=convert_beit_official, unused=_UNUSED, fills=_BEIT_FILLS,
                 model_has=_MODEL_HAS),
    WeightFormat("beit", "BEiT (mmseg's beit2mmseg)", lambda sd: _is_beit(sd, "layers"),
                 unused=_UNUSED, fills=_BEIT_FILLS, model_has=_MODEL_HAS),
    WeightFormat("mae_official", "MAE ViT (facebookresearch)", lambda sd: _is_mae(sd, "blocks"),
                 convert=convert_beit_official, unused=_UNUSED, fills=_MAE_FILLS,
                 model_has=_MODEL_HAS),
    WeightFormat("mae", "MAE ViT (mmseg's beit2mmseg)", lambda sd: _is_mae(sd, "layers"),
                 unused=_UNUSED, fills=_MAE_FILLS, model_has=_MODEL_HAS),
):
    register_weight_format(_fmt)
