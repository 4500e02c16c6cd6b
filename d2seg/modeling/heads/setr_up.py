"""SETR's naive and progressive-upsampling heads (mmseg's ``SETRUPHead``): a LayerNorm over the
channels of the one input map (``norm``, eps 1e-6), then ``num_convs`` blocks ``up_convs.{i}`` of
conv-norm-ReLU (kernel 1 or 3) + bilinear upsampling by ``up_scale``, then the classifier.
Naive = 1 conv k1 x4; PUP = 4 convs k3 x2 (to full resolution); the auxiliary heads 1-2 convs x4.

The per-head settings are keys of the head's own node (MODEL.SEM_SEG_HEAD, MODEL.AUX_HEAD,
MODEL.AUX_HEAD_2 ...): NUM_CONVS, KERNEL_SIZE and UP_SCALE (declared here on every head node).
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...config import register_config_keys
from ..layers.conv import conv_norm_act
from .base import BaseDecodeHead, head_config_node

__all__ = ["SETRUPHead", "Upsample", "channel_layer_norm", "up_scale_of"]

# mmseg's norm_layer default (no SETR config changes it), for the heads' and MLANeck's input LNs
LN_EPS = 1e-6


@register_config_keys
def add_setr_up_keys(keys):
    # the nodes are read when a config is made, after every module has registered its keys
    from ..meta_arch.encoder_decoder import AUX_HEAD_NODES

    for node in ("SEM_SEG_HEAD", "CASCADE_HEAD") + tuple(n for n, _ in AUX_HEAD_NODES):
        # SETR heads: bilinear upsampling factor after each conv block (mmseg's up_scale; the
        # PUP decode head 2, the other heads 4)
        keys.MODEL.setdefault(node, CN()).UP_SCALE = 4


def up_scale_of(node) -> int:
    """The node's UP_SCALE, checked: mmseg's configs use whole factors (mmseg sizes the output
    as int(size * scale); a whole factor keeps it exact and the exported graph's size dynamic)."""
    scale = node.UP_SCALE
    if isinstance(scale, bool) or scale != int(scale) or scale < 1:
        raise ValueError(f"UP_SCALE={scale!r} of the {node.NAME} head: a whole factor >= 1")
    return int(scale)


class Upsample(nn.Module):
    """mmseg's ``Upsample(scale_factor=s)`` inside a Sequential (no weights, takes its index):
    bilinear to exactly ``s`` times the input's size."""

    def __init__(self, scale: int, align_corners: bool):
        super().__init__()
        self.scale = scale
        self.align_corners = align_corners

    def forward(self, x):
        size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)


def channel_layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the channels of an N x C x H x W map (mmseg goes through N x HW x C)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


@SEM_SEG_HEADS_REGISTRY.register()
class SETRUPHead(BaseDecodeHead):
    @configurable
    def __init__(self, input_shape, *, num_convs: int = 1, kernel_size: int = 3,
                 up_scale: int = 4, **kwargs):
        super().__init__(input_shape, **kwargs)
        if self.input_transform:
            raise ValueError(f"SETRUPHead reads one feature map: INPUT_TRANSFORM="
                             f"{self.input_transform!r} must be ''")
        if kernel_size not in (1, 3) or num_convs < 1:
            raise ValueError(f"SETRUPHead: KERNEL_SIZE={kernel_size} must be 1 or 3 and "
                             f"NUM_CONVS={num_convs} >= 1")
        self.up_convs = nn.ModuleList(
            nn.Sequential(
                conv_norm_act(self.in_channels if i == 0 else self.channels, self.channels,
                              kernel_size, norm=self.norm),
                Upsample(up_scale, self.align_corners))
            for i in range(num_convs))
        # mmseg's input LN is the module ``norm`` (checkpoint key); it replaces the conv norm's
        # name, which the convs above have used
        self.norm = nn.LayerNorm(self.in_channels, eps=LN_EPS)

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        node = head_config_node(cfg, head_cfg)
        ret.update(num_convs=node.NUM_CONVS, kernel_size=node.KERNEL_SIZE,
                   up_scale=up_scale_of(node))
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        x = channel_layer_norm(x, self.norm)
        for up_conv in self.up_convs:
            x = up_conv(x)
        return x
