"""ANN head (mmseg's ``ANNHead``): asymmetric fusion (AFNB) and pyramid (APNB) non-local blocks."""
from typing import List, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...export.tracing import AdaptiveAvgPool2d
from ..layers.conv import conv_norm_act
from ...cpu_kernels.pointwise import conv1x1
from ..layers.self_attention import SelfAttentionBlock
from .base import BaseDecodeHead

__all__ = ["ANNHead", "AFNB", "APNB", "PPMConcat"]


class PPMConcat(nn.ModuleList):
    """Average-pools to each scale and concatenates the flattened bins: N x C x sum(s^2).
    (The pools export with dynamic input sizes: d2seg.export.tracing.)"""

    def __init__(self, pool_scales: Sequence[int] = (1, 3, 6, 8)):
        super().__init__(AdaptiveAvgPool2d(s) for s in pool_scales)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.cat([pool(feats).flatten(2) for pool in self], dim=2)


def ann_attention(low_in_channels, high_in_channels, channels, out_channels, share_key_query,
                  query_scale, key_pool_scales, norm) -> SelfAttentionBlock:
    """mmseg's ANN ``SelfAttentionBlock``: keys/values pooled by PPMConcat, conv-norm-ReLU
    key/query projections, plain (zero-init) value/out convs, sqrt(d) scaling."""
    return SelfAttentionBlock(
        low_in_channels, high_in_channels, channels, out_channels, share_key_query,
        query_downsample=nn.MaxPool2d(query_scale) if query_scale > 1 else None,
        key_downsample=PPMConcat(key_pool_scales), key_query_num_convs=1,
        value_out_num_convs=1, key_query_norm=True, value_out_norm=False, matmul_norm=True,
        with_out=True, norm=norm)


class _AttentionFusion(nn.Module):
    """``bottleneck(cat([sum of the stages' attention, feats]))``, the tail of AFNB and APNB.

    ``fold_projections`` (MODEL.SPEED.FOLD_PROJECTIONS) composes each stage's ``out_project``, a
    plain 1x1 conv, into the bottleneck's context half: ``Wc (Wo a + bo) = (Wc Wo) a + Wc bo``.
    AFNB's 4096 -> 2048 bottleneck then costs a 2048 x 256 GEMM on the attention output plus a
    2048 x 2048 one on the features instead of 2048 x 4096 after a 256 -> 2048 projection. Same
    sum in another order (float rounding); autograd reaches every weight as before."""

    fold_projections = False
    stages: nn.ModuleList
    bottleneck: nn.Module

    def fuse(self, query_feats, key_feats, feats):
        if not self.fold_projections:
            context = torch.stack([stage(query_feats, key_feats) for stage in self.stages]).sum(0)
            return self.bottleneck(torch.cat([context, feats], 1))
        conv = self.bottleneck
        c = self.stages[0].out_channels
        w_context, w_feats = conv.weight[:, :c, 0, 0], conv.weight[:, c:]
        bias = conv.bias
        for stage in self.stages:
            b = w_context @ stage.out_project.bias
            bias = b if bias is None else bias + b
        out = conv1x1(feats, w_feats, bias)
        for stage in self.stages:
            w = (w_context @ stage.out_project.weight[:, :, 0, 0])[:, :, None, None]
            out = out + conv1x1(stage.attend(query_feats, key_feats), w, None)
        if conv.norm is not None:
            out = conv.norm(out)
        if conv.activation is not None:
            out = conv.activation(out)
        return out


class AFNB(_AttentionFusion):
    """High-level queries attend to low-level keys; ``bottleneck`` (1x1, norm, no ReLU) fuses
    the summed contexts with the high-level features."""

    def __init__(self, low_in_channels, high_in_channels, channels, out_channels,
                 query_scales, key_pool_scales, norm):
        super().__init__()
        self.stages = nn.ModuleList(
            ann_attention(low_in_channels, high_in_channels, channels, out_channels, False, s,
                          key_pool_scales, norm)
            for s in query_scales
        )
        self.bottleneck = conv_norm_act(out_channels + high_in_channels, out_channels, 1,
                                        norm=norm, activation=False)

    def forward(self, low_feats, high_feats):
        return self.fuse(high_feats, low_feats, high_feats)


class APNB(_AttentionFusion):
    """Self-attention with a shared key/query projection; ``bottleneck`` (1x1 conv-norm-ReLU)
    fuses the summed contexts with the input."""

    def __init__(self, in_channels, channels, out_channels, query_scales, key_pool_scales, norm):
        super().__init__()
        self.stages = nn.ModuleList(
            ann_attention(in_channels, in_channels, channels, out_channels, True, s,
                          key_pool_scales, norm)
            for s in query_scales
        )
        self.bottleneck = conv_norm_act(2 * in_channels, out_channels, 1, norm=norm)

    def forward(self, feats):
        return self.fuse(feats, feats, feats)


@SEM_SEG_HEADS_REGISTRY.register()
class ANNHead(BaseDecodeHead):
    """Reads (low, high) features (MULTIPLE_SELECT, e.g. res4 and res5): ``fusion`` (AFNB) ->
    dropout -> ``bottleneck`` 3x3 -> ``context`` (APNB) -> classifier."""

    @configurable
    def __init__(self, input_shape, *, project_channels: int = 256,
                 query_scales: Sequence[int] = (1,), key_pool_scales: Sequence[int] = (1, 3, 6, 8),
                 **kwargs):
        super().__init__(input_shape, **kwargs)
        if self.input_transform != "multiple_select" or len(self.in_channels) != 2:
            raise ValueError(
                "ANNHead needs INPUT_TRANSFORM='multiple_select' and two IN_FEATURES (low, high), "
                f"got {self.input_transform!r} and {self.in_features}"
            )
        low_in_channels, high_in_channels = self.in_channels
        self.fusion = AFNB(low_in_channels, high_in_channels, project_channels, high_in_channels,
                           query_scales, key_pool_scales, self.norm)
        self.bottleneck = conv_norm_act(high_in_channels, self.channels, 3, norm=self.norm)
        self.context = APNB(self.channels, project_channels, self.channels, query_scales,
                            key_pool_scales, self.norm)

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        node = cfg.MODEL.ANN_HEAD
        ret.update(project_channels=node.PROJECT_CHANNELS,
                   query_scales=list(node.QUERY_SCALES),
                   key_pool_scales=list(node.KEY_POOL_SCALES))
        return ret

    def layers(self, x: List[torch.Tensor]) -> torch.Tensor:
        low_feats, high_feats = x
        out = self.fusion(low_feats, high_feats)
        if self.dropout is not None:  # mmseg reuses the classifier's dropout here
            out = self.dropout(out)
        return self.context(self.bottleneck(out))
