"""DANet head (mmseg's ``DAHead``): parallel position- and channel-attention branches."""
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.conv import conv_norm_act
from ..layers.scale import Scale
from ..layers.self_attention import SelfAttentionBlock, float32_under_autocast
from .base import BaseDecodeHead

__all__ = ["DAHead", "PAM", "CAM"]


class PAM(SelfAttentionBlock):
    """Position attention: plain 1x1 key/query (``channels``) and value convs, no sqrt(d)
    scaling; the result, gated by ``gamma = Scale(0)``, is added to the input."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__(
            in_channels, in_channels, channels, in_channels, share_key_query=False,
            query_downsample=None, key_downsample=None, key_query_num_convs=1,
            value_out_num_convs=1, key_query_norm=False, value_out_norm=False,
            matmul_norm=False, with_out=False)
        self.gamma = Scale(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma(super().forward(x, x)) + x


class CAM(nn.Module):
    """Channel attention: softmax(max(X Xᵀ) - X Xᵀ) over channels, gated by ``Scale(0)``."""

    def __init__(self):
        super().__init__()
        self.gamma = Scale(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # float32 under autocast: X Xᵀ sums over all H*W positions (131072 at 512x1024 / 8), far
        # past float16's 65504, and inf - inf in the softmax gives NaN
        ctx, (feats,) = float32_under_autocast(x.reshape(n, c, -1))
        with ctx:
            energy = torch.bmm(feats, feats.transpose(1, 2))  # N x C x C
            attention = (energy.max(dim=-1, keepdim=True)[0] - energy).softmax(dim=-1)
            out = torch.bmm(attention, feats).view(n, c, h, w).to(x.dtype)
        return self.gamma(out) + x


@SEM_SEG_HEADS_REGISTRY.register()
class DAHead(BaseDecodeHead):
    """Two branches on the input, each ``*_in_conv`` 3x3 -> attention -> ``*_out_conv`` 3x3:
    PAM (``pam_channels`` key/query) and CAM. The classifier reads their sum; when training,
    each branch also has its own classifier (``pam_conv_seg``/``cam_conv_seg``) and loss, all
    three with the head's weight (mmseg's ``pam_cam``/``pam``/``cam`` losses)."""

    @configurable
    def __init__(self, input_shape, *, pam_channels: int = 64, **kwargs):
        super().__init__(input_shape, **kwargs)
        c = self.channels
        self.pam_in_conv = conv_norm_act(self.in_channels, c, 3, norm=self.norm)
        self.pam = PAM(c, pam_channels)
        self.pam_out_conv = conv_norm_act(c, c, 3, norm=self.norm)
        self.pam_conv_seg = nn.Conv2d(c, self.num_classes, kernel_size=1)
        self.cam_in_conv = conv_norm_act(self.in_channels, c, 3, norm=self.norm)
        self.cam = CAM()
        self.cam_out_conv = conv_norm_act(c, c, 3, norm=self.norm)
        self.cam_conv_seg = nn.Conv2d(c, self.num_classes, kernel_size=1)

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["pam_channels"] = cfg.MODEL.DA_HEAD.PAM_CHANNELS
        return ret

    def branches(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(PAM features, CAM features) of the input."""
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        return pam_feat, cam_feat

    def pam_cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        return self.pam_conv_seg(feat if self.dropout is None else self.dropout(feat))

    def cam_cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        return self.cam_conv_seg(feat if self.dropout is None else self.dropout(feat))

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        pam_feat, cam_feat = self.branches(x)
        return pam_feat + cam_feat

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        pam_feat, cam_feat = self.branches(self.transform_inputs(features))
        logits = self.cls_seg(pam_feat + cam_feat)
        if targets is None:  # inference: the fused output only
            return logits, {}
        losses = self.losses(logits, targets)
        pam_logits, cam_logits = self.pam_cls_seg(pam_feat), self.cam_cls_seg(cam_feat)
        losses[f"{self.loss_name}_pam"] = self.loss_on(pam_logits, targets, log_accuracy=False)
        losses[f"{self.loss_name}_cam"] = self.loss_on(cam_logits, targets, log_accuracy=False)
        return logits, losses
