"""OCRNet's head (mmseg's ``OCRHead``): the second stage of a ``CascadeEncoderDecoder``, which
refines the first stage's logits with object-contextual representations."""
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.conv import conv_norm_act
from ..layers.self_attention import SelfAttentionBlock
from .base import BaseDecodeHead

__all__ = ["OCRHead", "ObjectAttentionBlock", "SpatialGatherModule"]


class SpatialGatherModule(nn.Module):
    """One centre per class: the features averaged with the softmax over H*W of that class's
    (``scale`` x) logits. Returns N x C x K x 1."""

    def __init__(self, scale: float = 1):
        super().__init__()
        self.scale = scale

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        probs = (self.scale * probs.flatten(2)).softmax(dim=2)  # N x K x HW
        context = torch.matmul(probs, feats.flatten(2).transpose(1, 2))  # N x K x C
        # contiguous as mmseg's: a transposed view is channels-last in memory, for which the
        # key/value convs and their training-mode BN sum in another order, a rounding that the
        # BN over only N*K centres amplifies in the gradients (docs/parity.md)
        return context.transpose(1, 2).contiguous().unsqueeze(3)


class ObjectAttentionBlock(SelfAttentionBlock):
    """Pixels (queries) attend to the class centres (keys/values); the context is fused with the
    pixel features by a 1x1 ``bottleneck`` on cat[context, feats]."""

    def __init__(self, in_channels: int, channels: int, scale: float = 1, *, norm: str = "BN"):
        if scale > 1:
            # mmseg max-pools the queries by `scale` but then reshapes the context to the
            # un-pooled size, which fails: only scale <= 1 runs there.
            raise ValueError(f"OCR_HEAD.SCALE={scale}: scale > 1 is not supported (as in mmseg)")
        super().__init__(
            key_in_channels=in_channels, query_in_channels=in_channels, channels=channels,
            out_channels=in_channels, share_key_query=False, query_downsample=None,
            key_downsample=None, key_query_num_convs=2, value_out_num_convs=1,
            key_query_norm=True, value_out_norm=True, matmul_norm=True, with_out=True, norm=norm,
        )
        self.bottleneck = conv_norm_act(in_channels * 2, in_channels, 1, norm=norm)

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        context = super().forward(query_feats, key_feats)
        return self.bottleneck(torch.cat([context, query_feats], dim=1))


@SEM_SEG_HEADS_REGISTRY.register()
class OCRHead(BaseDecodeHead):
    """3x3 ``bottleneck`` (in -> channels), class centres gathered with the previous stage's
    logits, object attention, classifier. ``forward`` needs those logits (``prev_output``, at
    the size of this head's features)."""

    @configurable
    def __init__(self, input_shape, *, ocr_channels: int, scale: float = 1, **kwargs):
        super().__init__(input_shape, **kwargs)
        self.ocr_channels = ocr_channels
        self.scale = scale
        self.object_context_block = ObjectAttentionBlock(
            self.channels, ocr_channels, scale, norm=self.norm
        )
        self.spatial_gather_module = SpatialGatherModule(scale)
        self.bottleneck = conv_norm_act(self.in_channels, self.channels, 3, norm=self.norm)

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret.update(ocr_channels=cfg.MODEL.OCR_HEAD.OCR_CHANNELS, scale=cfg.MODEL.OCR_HEAD.SCALE)
        return ret

    def forward(self, features, targets=None, prev_output=None):
        if prev_output is None:
            raise ValueError("OCRHead needs the previous stage's logits (prev_output); build it "
                             "as the second stage of CascadeEncoderDecoder")
        feats = self.bottleneck(self.transform_inputs(features))
        if prev_output.shape[-2:] != feats.shape[-2:]:
            raise ValueError(
                f"OCRHead: previous logits {tuple(prev_output.shape[-2:])} and features "
                f"{tuple(feats.shape[-2:])} differ in size; give both stages features of the "
                "same stride"
            )
        context = self.spatial_gather_module(feats, prev_output)
        logits = self.cls_seg(self.object_context_block(feats, context))
        losses = self.losses(logits, targets) if targets is not None else {}
        return logits, losses
