"""Mix Transformer (SegFormer's MiT, mmseg's ``MixVisionTransformer``) as a Detectron2 backbone
with outputs ``mit1``..``mit4`` (strides 4, 8, 16, 32).

The outputs are named after the family and mmseg's stage (``out_indices`` + 1), as HRNet's
``hr1``..``hr4``, not ``res2``..``res5``: a head config written for a ResNet then fails naming
the backbone's outputs instead of silently reading transformer stages as ResNet ones.

Module names and nesting are mmseg's (``layers.{i}.0`` patch embedding with ``projection`` and
``norm``, ``layers.{i}.1.{j}`` encoder layers with ``norm1``/``attn``/``norm2``/``ffn``,
``layers.{i}.2`` the stage's final norm; ``attn.attn`` holds nn.MultiheadAttention's
``in_proj_weight``/``in_proj_bias``/``out_proj``; ``ffn.layers.{0,1,4}`` the Mix-FFN convs), so
an mmseg SegFormer checkpoint's backbone keys load unchanged. Attention itself runs through
``F.scaled_dot_product_attention`` (the same softmax(qk^T/sqrt(d))v as nn.MultiheadAttention).
"""
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...config import register_config_keys

__all__ = ["MixVisionTransformer", "build_mit_backbone"]

LN_EPS = 1e-6  # mmseg's MixVisionTransformer default norm_cfg=dict(type='LN', eps=1e-6)


@register_config_keys
def add_mit_keys(keys):
    keys.MODEL.MIT = CN()
    keys.MODEL.MIT.EMBED_DIMS = 32  # stage i has EMBED_DIMS * NUM_HEADS[i] channels (B1-B5: 64)
    keys.MODEL.MIT.NUM_LAYERS = [2, 2, 2, 2]  # encoder layers per stage (B2: 3,4,6,3; B5: 3,6,40,3)
    keys.MODEL.MIT.NUM_HEADS = [1, 2, 5, 8]
    keys.MODEL.MIT.PATCH_SIZES = [7, 3, 3, 3]  # overlapping patch embedding kernels (pad k // 2)
    keys.MODEL.MIT.STRIDES = [4, 2, 2, 2]
    keys.MODEL.MIT.SR_RATIOS = [8, 4, 2, 1]  # keys/values come from a k x k/k conv of the input
    keys.MODEL.MIT.MLP_RATIO = 4
    keys.MODEL.MIT.QKV_BIAS = True  # (as mmseg, also the attention output projection's bias)
    keys.MODEL.MIT.DROP_RATE = 0.0
    keys.MODEL.MIT.ATTN_DROP_RATE = 0.0
    keys.MODEL.MIT.DROP_PATH_RATE = 0.1  # linear from 0 over all encoder layers
    keys.MODEL.MIT.OUT_FEATURES = ["mit1", "mit2", "mit3", "mit4"]


def nlc_to_nchw(x: torch.Tensor, hw) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])


def nchw_to_nlc(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def init_linear_or_layernorm_(m: nn.Module) -> bool:
    """mmseg's transformer init of one module: trunc-normal(.02) Linear weights with zero biases,
    LayerNorms 1/0; False for other modules."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    else:
        return False
    return True


class DropPath(nn.Module):
    """Stochastic depth per sample (mmcv's DropPath: kept samples scaled by 1 / keep)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype,
                                  device=x.device)).floor_()
        return x.div(keep) * mask


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: a k x k / s conv with padding k // 2, then LayerNorm."""

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int, stride: int):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size, stride,
                                    padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dims, eps=LN_EPS)

    def forward(self, x):
        x = self.projection(x)
        hw = x.shape[2:]
        return self.norm(nchw_to_nlc(x)), hw


class EfficientMultiheadAttention(nn.Module):
    """Multi-head attention whose keys/values come from the input reduced by a sr x sr / sr conv
    (``sr`` + LayerNorm ``norm``) when ``sr_ratio`` > 1; adds the result to ``identity``."""

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float, proj_drop: float,
                 drop_path: float, qkv_bias: bool, sr_ratio: int):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        # the parameter holder only (mmseg's names and init: xavier in_proj, zero biases);
        # forward runs scaled_dot_product_attention on its tensors
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=attn_drop,
                                          bias=qkv_bias, batch_first=True)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = DropPath(drop_path)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(embed_dims, eps=LN_EPS)

    def forward(self, x, hw, identity):
        x_kv = x
        if self.sr_ratio > 1:
            x_kv = self.norm(nchw_to_nlc(self.sr(nlc_to_nchw(x, hw))))
        n, length, c = x.shape
        w, b = self.attn.in_proj_weight, self.attn.in_proj_bias
        q = F.linear(x, w[:c], None if b is None else b[:c])
        kv = F.linear(x_kv, w[c:], None if b is None else b[c:])
        q = q.reshape(n, length, self.num_heads, -1).transpose(1, 2)
        k, v = kv.reshape(n, -1, 2, self.num_heads, c // self.num_heads).permute(
            2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = self.attn.out_proj(out.transpose(1, 2).reshape(n, length, c))
        return identity + self.dropout_layer(self.proj_drop(out))


class MixFFN(nn.Module):
    """1x1 conv -> 3x3 depthwise conv (the positional encoding) -> GELU -> 1x1 conv, on the
    tokens as a map; ``layers`` indices as mmseg's (0, 1, 4 hold weights)."""

    def __init__(self, embed_dims: int, hidden: int, ffn_drop: float, drop_path: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(embed_dims, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Dropout(ffn_drop),
            nn.Conv2d(hidden, embed_dims, 1),
            nn.Dropout(ffn_drop),
        )
        self.dropout_layer = DropPath(drop_path)

    def forward(self, x, hw, identity):
        out = nchw_to_nlc(self.layers(nlc_to_nchw(x, hw)))
        return identity + self.dropout_layer(out)


class TransformerEncoderLayer(nn.Module):
    def __init__(self, embed_dims, num_heads, mlp_ratio, drop_rate, attn_drop_rate,
                 drop_path_rate, qkv_bias, sr_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.attn = EfficientMultiheadAttention(embed_dims, num_heads, attn_drop_rate,
                                                drop_rate, drop_path_rate, qkv_bias, sr_ratio)
        self.norm2 = nn.LayerNorm(embed_dims, eps=LN_EPS)
        self.ffn = MixFFN(embed_dims, mlp_ratio * embed_dims, drop_rate, drop_path_rate)

    def forward(self, x, hw):
        x = self.attn(self.norm1(x), hw, identity=x)
        return self.ffn(self.norm2(x), hw, identity=x)


class MixVisionTransformer(Backbone):
    """Four stages of (overlapping patch embedding -> encoder layers -> LayerNorm)."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        embed_dims: int = 32,
        num_layers: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        patch_sizes: Sequence[int] = (7, 3, 3, 3),
        strides: Sequence[int] = (4, 2, 2, 2),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: int = 4,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        out_features: Sequence[str] = ("mit1", "mit2", "mit3", "mit4"),
    ):
        super().__init__()
        lists = dict(NUM_LAYERS=num_layers, NUM_HEADS=num_heads, PATCH_SIZES=patch_sizes,
                     STRIDES=strides, SR_RATIOS=sr_ratios)
        if len({len(v) for v in lists.values()}) != 1:
            raise ValueError("MODEL.MIT: NUM_LAYERS, NUM_HEADS, PATCH_SIZES, STRIDES and "
                             "SR_RATIOS need one value per stage, got "
                             + ", ".join(f"{k}={list(v)}" for k, v in lists.items()))
        names = [f"mit{i + 1}" for i in range(len(num_layers))]
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"MiT OUT_FEATURES {unknown} are not among {names}")
        # stochastic depth grows linearly over all encoder layers, as mmseg's (on the CPU: the
        # values are read back, also when the model is built on the meta device)
        dpr = torch.linspace(0, drop_path_rate, sum(num_layers), device="cpu").tolist()
        self.layers = nn.ModuleList()
        self._out_feature_channels, self._out_feature_strides = {}, {}
        cur, stride = 0, 1
        for i, n in enumerate(num_layers):
            dims = embed_dims * num_heads[i]
            blocks = nn.ModuleList(
                TransformerEncoderLayer(dims, num_heads[i], mlp_ratio, drop_rate, attn_drop_rate,
                                        dpr[cur + j], qkv_bias, sr_ratios[i])
                for j in range(n)
            )
            self.layers.append(nn.ModuleList([
                PatchEmbed(in_channels, dims, patch_sizes[i], strides[i]),
                blocks,
                nn.LayerNorm(dims, eps=LN_EPS),
            ]))
            in_channels, cur, stride = dims, cur + n, stride * strides[i]
            self._out_feature_channels[names[i]] = dims
            self._out_feature_strides[names[i]] = stride
        self._out_features = list(out_features)
        # the last stage that is an output: later ones are not run
        self._num_run = max(names.index(f) for f in self._out_features) + 1
        self._init_weights()

    def _init_weights(self):
        # mmseg's MixVisionTransformer.init_weights without a checkpoint (the attention's
        # in_proj keeps nn.MultiheadAttention's xavier init, as in mmseg)
        for m in self.modules():
            if init_linear_or_layernorm_(m):
                continue
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        outs = {}
        for i, (patch_embed, blocks, norm) in enumerate(self.layers[: self._num_run]):
            x, hw = patch_embed(x)
            for block in blocks:
                x = block(x, hw)
            x = nlc_to_nchw(norm(x), hw)
            if f"mit{i + 1}" in self._out_features:
                outs[f"mit{i + 1}"] = x
        return outs
    # output_shape: Detectron2's Backbone default, from _out_feature_channels/_strides


@BACKBONE_REGISTRY.register()
def build_mit_backbone(cfg, input_shape: ShapeSpec) -> MixVisionTransformer:
    """MiT from MODEL.MIT (B0 by default; see configs/_base_/models/segformer_mit-b0.yaml)."""
    # every MODEL.MIT key is the lower-cased argument of the same name
    args = {k.lower(): v for k, v in cfg.MODEL.MIT.items()}
    return MixVisionTransformer(in_channels=input_shape.channels, **args)
