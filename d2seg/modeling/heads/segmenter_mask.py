"""Segmenter's mask transformer (mmseg's ``SegmenterMaskTransformerHead``).

The 1/16 map's tokens are projected (``dec_proj``) to EMBED_DIMS, one learned token per class
(``cls_emb``) is appended, and ViT's encoder layers (backbone/vit.py's, LN eps 1e-5 as mmseg's
default ``norm_cfg``) run on the lot; after ``decoder_norm`` the patch and class tokens go
through bias-free projections, are L2-normalised, and their dot products, normalised over the
classes (``mask_norm``), are the logits at the input's stride. There is no ``conv_seg``.
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...checkpoint.compat import register_class_tensors
from ...config import register_config_keys
from ..backbone.vit import TransformerEncoderLayer
from .base import BaseDecodeHead

__all__ = ["SegmenterMaskTransformerHead"]

# sized by the class count: fine-tuning to another dataset re-initialises them (no conv_seg here)
register_class_tensors(r"cls_emb", class_dim=1)
register_class_tensors(r"mask_norm\.(weight|bias)")


@register_config_keys
def add_segmenter_head_keys(keys):
    # mmseg's SegmenterMaskTransformerHead arguments (defaults: its defaults, num_layers 2 and
    # ViT-B's 12 heads / 768 dims as configs/_base_/models/segmenter_vit-b16_mask.py)
    keys.MODEL.SEGMENTER_HEAD = CN()
    keys.MODEL.SEGMENTER_HEAD.NUM_LAYERS = 2  # num_layers
    keys.MODEL.SEGMENTER_HEAD.NUM_HEADS = 12  # num_heads (the backbone's in mmseg's configs)
    keys.MODEL.SEGMENTER_HEAD.EMBED_DIMS = 768  # embed_dims
    keys.MODEL.SEGMENTER_HEAD.MLP_RATIO = 4  # mlp_ratio
    keys.MODEL.SEGMENTER_HEAD.DROP_PATH_RATE = 0.1  # drop_path_rate (linear over the layers)
    keys.MODEL.SEGMENTER_HEAD.DROP_RATE = 0.0  # drop_rate
    keys.MODEL.SEGMENTER_HEAD.ATTN_DROP_RATE = 0.0  # attn_drop_rate
    keys.MODEL.SEGMENTER_HEAD.QKV_BIAS = True  # qkv_bias
    keys.MODEL.SEGMENTER_HEAD.NORM_EPS = 1e-5  # eps of every LayerNorm (norm_cfg LN default)
    keys.MODEL.SEGMENTER_HEAD.INIT_STD = 0.02  # init_std


@SEM_SEG_HEADS_REGISTRY.register()
class SegmenterMaskTransformerHead(BaseDecodeHead):
    @configurable
    def __init__(self, input_shape, *, num_layers: int, num_heads: int, embed_dims: int,
                 mlp_ratio: float = 4, drop_path_rate: float = 0.1, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, qkv_bias: bool = True, norm_eps: float = 1e-5,
                 init_std: float = 0.02, **kwargs):
        super().__init__(input_shape, **kwargs)
        if self.input_transform:
            raise ValueError(f"SegmenterMaskTransformerHead reads one feature map: "
                             f"INPUT_TRANSFORM={self.input_transform!r} must be ''")
        if num_layers < 1:
            raise ValueError(f"MODEL.SEGMENTER_HEAD.NUM_LAYERS={num_layers} must be >= 1")
        if num_heads < 1 or embed_dims % num_heads:
            raise ValueError(f"MODEL.SEGMENTER_HEAD.EMBED_DIMS={embed_dims} must be a multiple "
                             f"of MODEL.SEGMENTER_HEAD.NUM_HEADS={num_heads}")
        del self.conv_seg  # the masks are the logits
        # CPU: the values are read back to Python
        dpr = torch.linspace(0, drop_path_rate, num_layers, device="cpu").tolist()
        self.layers = nn.ModuleList([
            TransformerEncoderLayer(embed_dims, num_heads, int(mlp_ratio * embed_dims),
                                    drop_rate, attn_drop_rate, dpr[i], qkv_bias, norm_eps)
            for i in range(num_layers)])
        self.dec_proj = nn.Linear(self.in_channels, embed_dims)
        self.cls_emb = nn.Parameter(torch.randn(1, self.num_classes, embed_dims))
        self.patch_proj = nn.Linear(embed_dims, embed_dims, bias=False)
        self.classes_proj = nn.Linear(embed_dims, embed_dims, bias=False)
        self.decoder_norm = nn.LayerNorm(embed_dims, eps=norm_eps)
        self.mask_norm = nn.LayerNorm(self.num_classes, eps=norm_eps)
        self._init_weights(init_std)

    def _init_weights(self, std):
        # mmseg's init_weights: every Linear (the FFNs' too, bias 0) and cls_emb trunc-normal;
        # the packed in_proj is no Linear and keeps torch's xavier-uniform / 0
        nn.init.trunc_normal_(self.cls_emb, std=std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def layers(self) -> nn.ModuleList:
        # mmseg's name for the encoder layers (checkpoint keys ``layers.{i}``) shadows
        # BaseDecodeHead.layers(), which this head does not use (it has its own forward)
        return self._modules["layers"]

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret.update({k.lower(): v for k, v in cfg.MODEL.SEGMENTER_HEAD.items()})
        return ret

    def layers_forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = self.dec_proj(x.flatten(2).transpose(1, 2))
        x = torch.cat((x, self.cls_emb.expand(n, -1, -1)), dim=1)
        for layer in self.layers:
            x = layer(x)
        x = self.decoder_norm(x)
        k = self.num_classes
        patches = F.normalize(self.patch_proj(x[:, :-k]), dim=2, p=2)
        classes = F.normalize(self.classes_proj(x[:, -k:]), dim=2, p=2)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))
        return masks.transpose(1, 2).reshape(n, k, h, w)

    def forward(self, features, targets=None):
        # no dropout / conv_seg: mmseg's forward never calls cls_seg
        logits = self.layers_forward(self.transform_inputs(features))
        losses = self.losses(logits, targets) if targets is not None else {}
        return logits, losses
