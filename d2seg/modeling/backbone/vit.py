"""Vision Transformer (mmseg's ``VisionTransformer``: ViT, DeiT; reused by Segmenter, SETR and
DPT) as a Detectron2 backbone whose outputs are named by mmseg's layer index: ``out_indices``
(2, 5, 8, 11) are ``vit2``, ``vit5``, ``vit8``, ``vit11``, all at stride ``patch_size``. With
``output_cls_token`` each output also comes with ``vit{i}_cls`` (N x C, the class token after
that layer; not a map, so not in ``output_shape()``).

Module names are mmseg's, so its checkpoints load unchanged: ``patch_embed.projection`` (+
``patch_embed.norm`` with ``patch_norm``), ``cls_token``, ``pos_embed``, ``layers.{i}`` with
``ln1``, ``attn.attn.{in_proj_weight,in_proj_bias,out_proj}`` (mmcv's MultiheadAttention around
torch's), ``ln2``, ``ffn.layers.{0.0,1}`` (mmcv's FFN), and ``ln1`` the final norm.

Behaviour kept from mmseg:
- the patch embedding zero-pads the bottom/right to a multiple of the patch (AdaptivePadding
  'corner'), after normalisation;
- ``pos_embed`` holds img_size/patch_size squared tokens + the class slot; whenever the token
  count differs from it, its grid is resized to the input's (``interpolate_mode``, bicubic
  except SETR's bilinear, align_corners False), the class slot kept. (Only the count is
  compared, as mmseg: a grid of the same count but another shape is not resized.) ImageNet
  weights of another grid are resized to the model's at load (mmseg's init_weights; see
  :meth:`VisionTransformer.adapt_imagenet_weights`);
- pre-LN blocks; DropPath on the FFN branch only (mmcv's attention keeps ``Dropout(0)``);
- ``final_norm`` normalises the last layer's output only (the ``ln_`` configs);
- without ``with_cls_token`` the class token is still added with its position, then removed.
Attention runs through ``F.scaled_dot_product_attention`` on torch's packed in_proj tensors.
"""
import logging
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...checkpoint.backbones import WeightFormat, register_weight_format
from ...config import register_config_keys
from ...export.tracing import is_exporting
from .mit import EfficientMultiheadAttention
from .swin import FFN, PatchEmbed

__all__ = ["VisionTransformer", "TransformerEncoderLayer", "build_vit_backbone",
           "resize_pos_embed", "convert_vit_official"]

logger = logging.getLogger(__name__)
INTERPOLATE_MODES = ("bicubic", "bilinear", "nearest", "area")


@register_config_keys
def add_vit_keys(keys):
    # defaults are mmseg's VisionTransformer defaults; configs/_base_/models/upernet_vit-b16_mln
    # sets its ViT-B 512x512 values
    keys.MODEL.VIT = CN()
    keys.MODEL.VIT.IMG_SIZE = [224, 224]  # H, W of pos_embed's grid (x patch_size)
    keys.MODEL.VIT.PATCH_SIZE = 16
    keys.MODEL.VIT.EMBED_DIMS = 768  # ViT-B / DeiT-B 768, DeiT-S 384, ViT-L 1024
    keys.MODEL.VIT.NUM_LAYERS = 12
    keys.MODEL.VIT.NUM_HEADS = 12  # DeiT-S 6, ViT-L 16
    keys.MODEL.VIT.MLP_RATIO = 4
    keys.MODEL.VIT.OUT_INDICES = [11]  # layers whose outputs are features ``vit{i}``
    keys.MODEL.VIT.QKV_BIAS = True  # (torch's MultiheadAttention: the out_proj bias too)
    keys.MODEL.VIT.DROP_RATE = 0.0
    keys.MODEL.VIT.ATTN_DROP_RATE = 0.0
    keys.MODEL.VIT.DROP_PATH_RATE = 0.0  # linear from 0 over the layers, FFN branch only
    keys.MODEL.VIT.WITH_CLS_TOKEN = True
    keys.MODEL.VIT.OUTPUT_CLS_TOKEN = False  # also output ``vit{i}_cls``
    keys.MODEL.VIT.NORM_EPS = 1e-5  # LayerNorm eps (the ViT/DeiT/SETR/Segmenter configs: 1e-6)
    keys.MODEL.VIT.PATCH_NORM = False  # LayerNorm after the patch embedding
    keys.MODEL.VIT.FINAL_NORM = False  # LayerNorm ``ln1`` on the last layer's output
    keys.MODEL.VIT.INTERPOLATE_MODE = "bicubic"  # pos_embed resizing (SETR: bilinear)
    keys.MODEL.VIT.WITH_CP = False  # activation checkpointing of each layer while training


def resize_pos_embed(pos_embed: torch.Tensor, grid, pos_grid, mode: str) -> torch.Tensor:
    """mmseg's ``VisionTransformer.resize_pos_embed``: the last pos_h * pos_w tokens as a map,
    resized to ``grid`` (align_corners False); the first (class) token kept."""
    pos_h, pos_w = pos_grid
    cls = pos_embed[:, 0:1]
    tokens = pos_embed[:, -pos_h * pos_w:].reshape(1, pos_h, pos_w, -1).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=grid, mode=mode,
                           align_corners=False if mode in ("bilinear", "bicubic") else None)
    return torch.cat((cls, tokens.flatten(2).transpose(1, 2)), dim=1)


class TransformerEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + DropPath(ffn(ln2(x)))."""

    def __init__(self, embed_dims, num_heads, hidden, drop_rate, attn_drop_rate, drop_path_rate,
                 qkv_bias, eps, with_cp=False):
        super().__init__()
        self.with_cp = with_cp
        self.ln1 = nn.LayerNorm(embed_dims, eps=eps)
        # mmcv's MultiheadAttention = MiT's attention without reduction; its DropPath is 0
        self.attn = EfficientMultiheadAttention(embed_dims, num_heads, attn_drop_rate, drop_rate,
                                                0.0, qkv_bias, sr_ratio=1)
        self.ln2 = nn.LayerNorm(embed_dims, eps=eps)
        self.ffn = FFN(embed_dims, hidden, drop_rate, drop_path_rate)

    def _forward(self, x):
        x = self.attn(self.ln1(x), None, identity=x)
        return self.ffn(self.ln2(x), identity=x)

    def forward(self, x):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class VisionTransformer(Backbone):
    def __init__(
        self,
        *,
        in_channels: int = 3,
        img_size: Sequence[int] = (224, 224),
        patch_size: int = 16,
        embed_dims: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4,
        out_indices: Sequence[int] = (11,),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        with_cls_token: bool = True,
        output_cls_token: bool = False,
        norm_eps: float = 1e-5,
        patch_norm: bool = False,
        final_norm: bool = False,
        interpolate_mode: str = "bicubic",
        with_cp: bool = False,
    ):
        super().__init__()
        img_size = list(img_size)
        if len(img_size) == 1:
            img_size = img_size * 2
        if len(img_size) != 2 or min(img_size) < patch_size or patch_size < 1:
            raise ValueError(f"MODEL.VIT.IMG_SIZE={img_size} must be [H, W] of at least "
                             f"MODEL.VIT.PATCH_SIZE={patch_size} (> 0)")
        if embed_dims % num_heads:
            raise ValueError(f"MODEL.VIT.EMBED_DIMS={embed_dims} must be a multiple of "
                             f"MODEL.VIT.NUM_HEADS={num_heads}")
        bad = [i for i in out_indices if not 0 <= i < num_layers]
        if bad or not out_indices:
            raise ValueError(f"MODEL.VIT.OUT_INDICES={list(out_indices)}: {bad or 'none'} not "
                             f"among the layers 0..{num_layers - 1} (NUM_LAYERS={num_layers})")
        if output_cls_token and not with_cls_token:
            raise ValueError("MODEL.VIT.OUTPUT_CLS_TOKEN needs MODEL.VIT.WITH_CLS_TOKEN")
        if interpolate_mode not in INTERPOLATE_MODES:
            raise ValueError(f"MODEL.VIT.INTERPOLATE_MODE={interpolate_mode!r}: not one of "
                             f"{INTERPOLATE_MODES}")
        self.img_size = tuple(img_size)
        self.patch_size = patch_size
        self.pos_grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.interpolate_mode = interpolate_mode
        self.with_cls_token = with_cls_token
        self.output_cls_token = output_cls_token
        self.out_indices = sorted(set(out_indices))

        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size, norm=False)
        if patch_norm:  # (mmseg's PatchEmbed norm takes the model's LN eps)
            self.patch_embed.norm = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.pos_grid[0] * self.pos_grid[1] + 1, embed_dims))
        self.drop_after_pos = nn.Dropout(drop_rate)
        # CPU: the values are read back to Python
        dpr = torch.linspace(0, drop_path_rate, num_layers, device="cpu").tolist()
        self.layers = nn.ModuleList([
            TransformerEncoderLayer(embed_dims, num_heads, int(mlp_ratio * embed_dims),
                                    drop_rate, attn_drop_rate, dpr[i], qkv_bias, norm_eps,
                                    with_cp) for i in range(num_layers)])
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = nn.LayerNorm(embed_dims, eps=norm_eps)
        # layers after the last output are not run
        self._num_run = self.out_indices[-1] + 1
        self._out_features = [f"vit{i}" for i in self.out_indices]
        self._out_feature_channels = {f: embed_dims for f in self._out_features}
        self._out_feature_strides = {f: patch_size for f in self._out_features}
        self._init_weights()

    def _init_weights(self):
        # mmseg's init_weights without a checkpoint (timm's 'jax_impl'): tokens and Linears
        # trunc-normal(.02); FFN biases N(0, 1e-6), other Linear biases 0; the patch conv
        # kaiming-normal fan_in, bias 0; LayerNorms 1/0. The packed in_proj is no Linear: it
        # keeps torch's xavier-uniform / 0
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    if "ffn" in name:
                        nn.init.normal_(m.bias, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _pos_embedding(self, x, hw):
        pos = self.pos_embed
        # resized when the token count differs (mmseg); always while exporting, so the graph
        # works at every size (a resize to the same grid is the identity)
        if is_exporting() or x.shape[1] != pos.shape[1]:
            pos = resize_pos_embed(pos, hw, self.pos_grid, self.interpolate_mode)
        return self.drop_after_pos(x + pos)

    def forward(self, x):
        n = x.shape[0]
        x, hw = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(n, -1, -1), x), dim=1)
        x = self._pos_embedding(x, hw)
        if not self.with_cls_token:
            x = x[:, 1:]
        outs = {}
        for i, layer in enumerate(self.layers[: self._num_run]):
            x = layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                tokens = x[:, 1:] if self.with_cls_token else x
                # contiguous NCHW, as mmseg's: a channels-last view costs UPerNet's concat a copy
                outs[f"vit{i}"] = tokens.transpose(1, 2).reshape(n, -1, hw[0], hw[1]).contiguous()
                if self.output_cls_token:
                    outs[f"vit{i}_cls"] = x[:, 0]
        return outs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {f: ShapeSpec(channels=self._out_feature_channels[f],
                             stride=self._out_feature_strides[f]) for f in self._out_features}

    def adapt_imagenet_weights(self, sd: Dict[str, torch.Tensor], fmt: str):
        """SegCheckpointer's hook for ImageNet weights (``backbone.*`` keys), as mmseg's
        init_weights: a ``pos_embed`` of another square grid is resized to the model's
        (``interpolate_mode``); the ImageNet model's final norm (``ln1``) is dropped when this
        model has no ``final_norm`` (mmseg's non-strict load ignores it).
        Returns (weights, dropped keys, the model keys they fill)."""
        sd = dict(sd)
        key = "backbone.pos_embed"
        if key in sd and sd[key].shape != self.pos_embed.shape:
            v = sd[key]
            side = int((v.shape[1] - 1) ** 0.5) if v.dim() == 3 else 0
            dims = self.pos_embed.shape[2]
            if v.dim() != 3 or side * side + 1 != v.shape[1] or v.shape[2] != dims:
                raise ValueError(f"{key} of shape {tuple(v.shape)}: expected 1 x (S*S + 1) x "
                                 f"{dims} (a square grid and the class slot)")
            logger.info(f"Resizing {key} from {side}x{side} to {self.pos_grid[0]}x"
                        f"{self.pos_grid[1]} ({self.interpolate_mode})")
            sd[key] = resize_pos_embed(v.float(), self.pos_grid, (side, side),
                                       self.interpolate_mode).to(v.dtype)
        dropped = []
        if not self.final_norm:
            dropped = [k for k in ("backbone.ln1.weight", "backbone.ln1.bias") if k in sd]
            for k in dropped:
                del sd[k]
        return sd, dropped, "backbone."


@BACKBONE_REGISTRY.register()
def build_vit_backbone(cfg, input_shape: ShapeSpec) -> VisionTransformer:
    """ViT from MODEL.VIT (see configs/_base_/models/upernet_vit-b16_mln.yaml)."""
    # every MODEL.VIT key is the lower-cased argument of the same name
    args = {k.lower(): v for k, v in cfg.MODEL.VIT.items()}
    return VisionTransformer(in_channels=input_shape.channels, **args)


def convert_vit_official(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm ViT / DeiT keys -> mmseg's ``VisionTransformer`` keys, as mmseg's vit2mmseg.py
    (``head.*`` dropped; the final ``norm`` becomes ``ln1``)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("head"):
            continue
        if k.startswith("norm"):
            k = k.replace("norm.", "ln1.")
        elif k.startswith("patch_embed"):
            k = k.replace("proj", "projection")
        elif k.startswith("blocks"):
            for old, new in (("norm", "ln"), ("mlp.fc1", "ffn.layers.0.0"),
                             ("mlp.fc2", "ffn.layers.1"), ("attn.qkv.", "attn.attn.in_proj_"),
                             ("attn.proj", "attn.attn.out_proj")):
                if old in k:
                    k = k.replace(old, new)
                    break
            k = k.replace("blocks.", "layers.")
        out[k] = v
    return out


register_weight_format(WeightFormat(
    "vit_official", "ViT / DeiT (timm)",
    lambda sd: "patch_embed.proj.weight" in sd and any(k.startswith("blocks.0.attn.qkv.")
                                                       for k in sd),
    convert=convert_vit_official))
register_weight_format(WeightFormat(
    "vit", "ViT / DeiT (mmseg's vit2mmseg)",
    lambda sd: "patch_embed.projection.weight" in sd and "layers.0.attn.attn.in_proj_weight" in sd))
