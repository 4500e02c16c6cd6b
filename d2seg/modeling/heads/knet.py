"""K-Net (mmseg's ``IterativeDecodeHead``, ``KernelUpdateHead``, ``KernelUpdator``).

A kernel-generate head (any d2seg decode head: FCNHead, PSPHead, ASPPHead, UPerHead in mmseg's
configs, named by MODEL.KNET_HEAD.KERNEL_GENERATE_HEAD and configured by MODEL.SEM_SEG_HEAD as if
it were the decode head) gives the features, the stage-0 logits and, as its ``conv_seg`` weight,
one kernel per class. Each of NUM_STAGES ``KernelUpdateHead``s then pools the features under the
previous logits (softmax over the classes), updates the kernels (``KernelUpdator``'s gates, then
attention between the class kernels, FFN, mask FCs) and convolves the features with them: the
next logits. Training puts the generator's loss on every stage (``loss_sem_seg_s0`` ..); the test
output is the last stage.

Module names are mmseg's (``kernel_generate_head``, ``kernel_update_head.{i}.attention.attn``,
``ffn.layers.0.0`` ...), so mmseg checkpoints load through d2seg's generic ConvModule rules. mmcv's
pieces are plain PyTorch: ``MultiheadAttention`` is MiT's attention without reduction (the same
``nn.MultiheadAttention`` parameters; sequence-first vs batch-first does not change the maths),
``FFN`` Swin's with ReLU, ``build_norm_layer(LN)`` ``nn.LayerNorm`` (eps 1e-5).
"""
from typing import List, Optional

import torch
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...config import register_config_keys
from ..backbone.mit import EfficientMultiheadAttention
from ..backbone.swin import FFN
from ..layers.conv import conv_norm_act
from .base import BaseDecodeHead, head_config_node, resize

__all__ = ["IterativeDecodeHead", "KernelUpdateHead", "KernelUpdator"]


@register_config_keys
def add_knet_head_keys(keys):
    # mmseg's IterativeDecodeHead / KernelUpdateHead / KernelUpdator arguments; defaults are the
    # values of every configs/knet/*.py (where they differ from the class defaults, the class
    # default is given). The update heads' in/out channels are the generator's CONVS_DIM.
    keys.MODEL.KNET_HEAD = CN()
    # kernel_generate_head.type: a registered decode head, built from MODEL.SEM_SEG_HEAD's keys
    keys.MODEL.KNET_HEAD.KERNEL_GENERATE_HEAD = "FCNHead"
    keys.MODEL.KNET_HEAD.NUM_STAGES = 3  # num_stages (one KernelUpdateHead each)
    keys.MODEL.KNET_HEAD.NUM_HEADS = 8  # num_heads of the attention between the kernels
    keys.MODEL.KNET_HEAD.NUM_FFN_FCS = 2  # num_ffn_fcs (mmcv FFN num_fcs; only 2 is built)
    keys.MODEL.KNET_HEAD.NUM_MASK_FCS = 1  # num_mask_fcs (class default 3)
    keys.MODEL.KNET_HEAD.FEEDFORWARD_CHANNELS = 2048  # feedforward_channels
    keys.MODEL.KNET_HEAD.DROPOUT = 0.0  # dropout (attention weights and FFN)
    keys.MODEL.KNET_HEAD.CONV_KERNEL_SIZE = 1  # conv_kernel_size of the dynamic kernels
    keys.MODEL.KNET_HEAD.WITH_FFN = True  # with_ffn
    # feat_transform_cfg: a conv (bias, no norm, no activation) of this kernel size on the
    # features first; 0 = feat_transform_cfg None (class default)
    keys.MODEL.KNET_HEAD.FEAT_TRANSFORM_KERNEL_SIZE = 1
    keys.MODEL.KNET_HEAD.FEAT_GATHER_STRIDE = 1  # feat_gather_stride (feat_transform's stride)
    keys.MODEL.KNET_HEAD.MASK_TRANSFORM_STRIDE = 1  # mask_transform_stride (1 or 2)
    # kernel_updator_cfg (KernelUpdator): in_channels, feat_channels, out_channels
    keys.MODEL.KNET_HEAD.UPDATOR_IN_CHANNELS = 256
    keys.MODEL.KNET_HEAD.UPDATOR_FEAT_CHANNELS = 256
    keys.MODEL.KNET_HEAD.UPDATOR_OUT_CHANNELS = 256


class KernelUpdator(nn.Module):
    """mmseg's ``KernelUpdator`` with its defaults (sigmoid gates, no gate norm/activation, no
    output activation), LN and ReLU. Inputs are cut into rows of ``in_channels``: with 512-d
    kernels and in_channels 256 each kernel is updated as two halves, as in mmseg."""

    def __init__(self, in_channels: int = 256, feat_channels: int = 64,
                 out_channels: Optional[int] = None):
        super().__init__()
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.out_channels = out_channels or in_channels
        self.dynamic_layer = nn.Linear(in_channels, 2 * feat_channels)
        self.input_layer = nn.Linear(in_channels, 2 * feat_channels)
        self.input_gate = nn.Linear(in_channels, feat_channels)
        self.update_gate = nn.Linear(in_channels, feat_channels)
        self.norm_in = nn.LayerNorm(feat_channels)
        self.norm_out = nn.LayerNorm(feat_channels)
        self.input_norm_in = nn.LayerNorm(feat_channels)
        self.input_norm_out = nn.LayerNorm(feat_channels)
        self.activation = nn.ReLU()
        self.fc_layer = nn.Linear(feat_channels, self.out_channels)
        self.fc_norm = nn.LayerNorm(self.out_channels)

    def forward(self, update_feature: torch.Tensor, input_feature: torch.Tensor) -> torch.Tensor:
        update_feature = update_feature.reshape(-1, self.in_channels)
        num_proposals = update_feature.size(0)
        params = self.dynamic_layer(update_feature)  # phi_1 / psi_3 of the paper's Eq. 4-5
        param_in = params[:, :self.feat_channels]
        param_out = params[:, -self.feat_channels:]
        input_feats = self.input_layer(  # phi_2 / psi_4
            input_feature.reshape(num_proposals, -1, self.feat_channels))
        input_in = input_feats[..., :self.feat_channels]
        input_out = input_feats[..., -self.feat_channels:]
        gate_feats = input_in * param_in.unsqueeze(-2)  # F^G
        input_gate = self.input_norm_in(self.input_gate(gate_feats)).sigmoid()
        update_gate = self.norm_in(self.update_gate(gate_feats)).sigmoid()
        param_out = self.norm_out(param_out)
        input_out = self.input_norm_out(input_out)
        features = update_gate * param_out.unsqueeze(-2) + input_gate * input_out  # Eq. 5
        return self.activation(self.fc_norm(self.fc_layer(features)))


class KernelUpdateHead(nn.Module):
    """One K-Net stage: ``forward(x, kernels, mask_preds) -> (new mask_preds, new kernels)``,
    kernels as N x classes x C x k x k (mmseg's ``KernelUpdateHead`` with ReLU activations)."""

    def __init__(self, in_channels: int, *, num_heads: int = 8, num_ffn_fcs: int = 2,
                 num_mask_fcs: int = 3, feedforward_channels: int = 2048, dropout: float = 0.0,
                 conv_kernel_size: int = 1, feat_transform_kernel_size: int = 0,
                 with_ffn: bool = True, feat_gather_stride: int = 1,
                 mask_transform_stride: int = 1, updator_in_channels: int = 256,
                 updator_feat_channels: int = 64, updator_out_channels: int = 256):
        super().__init__()
        embed = in_channels * conv_kernel_size ** 2
        if num_heads < 1 or embed % num_heads:
            raise ValueError(f"MODEL.KNET_HEAD.NUM_HEADS={num_heads} must divide the kernel "
                             f"size {embed} (CONVS_DIM x CONV_KERNEL_SIZE^2)")
        if conv_kernel_size < 1 or conv_kernel_size % 2 == 0:
            raise ValueError(f"MODEL.KNET_HEAD.CONV_KERNEL_SIZE={conv_kernel_size} must be odd "
                             "(mmseg pads it by k // 2 and keeps the map's size)")
        if num_ffn_fcs != 2:
            raise ValueError(f"MODEL.KNET_HEAD.NUM_FFN_FCS={num_ffn_fcs}: only 2 (every mmseg "
                             "K-Net config) is built")
        if mask_transform_stride not in (1, 2) or feat_gather_stride < 1:
            raise ValueError(f"MODEL.KNET_HEAD.MASK_TRANSFORM_STRIDE={mask_transform_stride} "
                             f"must be 1 or 2 and FEAT_GATHER_STRIDE={feat_gather_stride} >= 1")
        if (updator_out_channels != updator_in_channels
                or embed % updator_in_channels):
            raise ValueError(
                f"MODEL.KNET_HEAD.UPDATOR_IN_CHANNELS={updator_in_channels} must divide the "
                f"kernel size {embed} and equal UPDATOR_OUT_CHANNELS={updator_out_channels} "
                "(the updated kernel has the kernel's size)")
        if feat_gather_stride > 1 and not feat_transform_kernel_size:
            raise ValueError("MODEL.KNET_HEAD.FEAT_GATHER_STRIDE > 1 needs a feat_transform "
                             "(FEAT_TRANSFORM_KERNEL_SIZE > 0)")
        self.in_channels = in_channels
        self.conv_kernel_size = conv_kernel_size
        self.feat_gather_stride = feat_gather_stride
        self.mask_transform_stride = mask_transform_stride
        self.attention = EfficientMultiheadAttention(embed, num_heads, dropout, 0.0, 0.0,
                                                     qkv_bias=True, sr_ratio=1)
        self.attention_norm = nn.LayerNorm(embed)
        self.kernel_update_conv = KernelUpdator(updator_in_channels, updator_feat_channels,
                                                updator_out_channels)
        self.feat_transform = None
        if feat_transform_kernel_size:
            # mmseg pads by feat_gather_stride // 2, whatever the kernel size
            self.feat_transform = conv_norm_act(
                in_channels, in_channels, feat_transform_kernel_size, activation=False,
                stride=feat_gather_stride, padding=feat_gather_stride // 2)
        self.with_ffn = with_ffn
        if with_ffn:
            self.ffn = FFN(in_channels, feedforward_channels, dropout, 0.0)
            self.ffn.layers[0][1] = nn.ReLU()  # mmcv's FFN act_cfg: ReLU here (GELU in Swin)
            self.ffn_norm = nn.LayerNorm(in_channels)
        self.mask_fcs = nn.Sequential(*[
            m for _ in range(num_mask_fcs)
            for m in (nn.Linear(in_channels, in_channels, bias=False),
                      nn.LayerNorm(in_channels), nn.ReLU())])
        self.fc_mask = nn.Linear(in_channels, in_channels)
        # mmseg never runs this head's init_weights (its nn.ModuleList stops mmcv's recursion):
        # every Linear, LN and the attention keep PyTorch's init, as here

    def forward(self, x: torch.Tensor, proposal_feat: torch.Tensor, mask_preds: torch.Tensor):
        n, num_proposals = proposal_feat.shape[:2]
        if self.feat_transform is not None:
            x = self.feat_transform(x)
        c, h, w = x.shape[-3:]
        masks = resize(mask_preds, (h, w), align_corners=False).softmax(dim=1)
        x_feat = torch.einsum("bnhw,bchw->bnc", masks, x)  # group feature assembling (Eq. 3)
        # kernels [B, N, C, K, K] -> [B, N, K*K, C]
        proposal_feat = proposal_feat.reshape(n, num_proposals, self.in_channels, -1).permute(
            0, 1, 3, 2)
        obj_feat = self.kernel_update_conv(x_feat, proposal_feat).reshape(n, num_proposals, -1)
        obj_feat = self.attention_norm(self.attention(obj_feat, None, obj_feat))
        obj_feat = obj_feat.reshape(n, num_proposals, -1, self.in_channels)
        if self.with_ffn:
            obj_feat = self.ffn_norm(self.ffn(obj_feat, identity=obj_feat))
        mask_feat = self.fc_mask(self.mask_fcs(obj_feat)).permute(0, 1, 3, 2)  # [B, N, C, K*K]

        mask_x = x
        if self.mask_transform_stride == 2 and self.feat_gather_stride == 1:
            mask_x = nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear",
                                               align_corners=False)
            h, w = mask_x.shape[-2:]
        k = self.conv_kernel_size
        if k == 1:
            new_mask_preds = torch.einsum("bnc,bchw->bnhw", mask_feat.reshape(n, num_proposals, c),
                                          mask_x)
        else:  # one grouped conv = mmseg's per-image conv with that image's kernels
            new_mask_preds = nn.functional.conv2d(
                mask_x.reshape(1, n * c, h, w), mask_feat.reshape(n * num_proposals, c, k, k),
                padding=k // 2, groups=n).reshape(n, num_proposals, h, w)
        if self.mask_transform_stride == 2:
            new_mask_preds = nn.functional.interpolate(new_mask_preds, scale_factor=2,
                                                       mode="bilinear", align_corners=False)
        kernels = obj_feat.permute(0, 1, 3, 2).reshape(n, num_proposals, self.in_channels, k, k)
        return new_mask_preds, kernels


@SEM_SEG_HEADS_REGISTRY.register()
class IterativeDecodeHead(BaseDecodeHead):
    """mmseg's ``IterativeDecodeHead``. Like mmseg's it skips BaseDecodeHead's own layers (no
    ``conv_seg`` of its own): input selection, classifier and loss are the generator's."""

    @configurable
    def __init__(self, kernel_generate_head: BaseDecodeHead, *, num_stages: int, **update_head):
        nn.Module.__init__(self)
        if num_stages < 1:
            raise ValueError(f"MODEL.KNET_HEAD.NUM_STAGES={num_stages} must be >= 1")
        gen = kernel_generate_head
        if gen.conv_seg.kernel_size != (1, 1):
            raise ValueError(f"{type(gen).__name__}'s classifier is no 1x1 conv: it cannot be "
                             "K-Net's kernel-generate head")
        self.kernel_generate_head = gen
        self.kernel_update_head = nn.ModuleList(
            [KernelUpdateHead(gen.channels, **update_head) for _ in range(num_stages)])
        # what the meta-architecture and the base class read
        for name in ("in_features", "input_transform", "in_channels", "common_stride",
                     "num_classes", "channels", "align_corners", "ignore_value", "loss_name"):
            setattr(self, name, getattr(gen, name))

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        node = head_config_node(cfg, head_cfg)
        knet = cfg.MODEL.KNET_HEAD
        name = knet.KERNEL_GENERATE_HEAD
        if name == cls.__name__ or name not in SEM_SEG_HEADS_REGISTRY:
            raise ValueError(f"MODEL.KNET_HEAD.KERNEL_GENERATE_HEAD={name!r} is not a decode "
                             "head registered in SEM_SEG_HEADS_REGISTRY (e.g. 'FCNHead', "
                             "'PSPHead', 'ASPPHead', 'UPerHead')")
        # the generator is configured by the decode head's node, as mmseg's kernel_generate_head
        gen = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape, head_cfg=node,
                                               loss_name=loss_name)
        return {
            "kernel_generate_head": gen,
            "num_stages": knet.NUM_STAGES,
            "num_heads": knet.NUM_HEADS,
            "num_ffn_fcs": knet.NUM_FFN_FCS,
            "num_mask_fcs": knet.NUM_MASK_FCS,
            "feedforward_channels": knet.FEEDFORWARD_CHANNELS,
            "dropout": knet.DROPOUT,
            "conv_kernel_size": knet.CONV_KERNEL_SIZE,
            "feat_transform_kernel_size": knet.FEAT_TRANSFORM_KERNEL_SIZE,
            "with_ffn": knet.WITH_FFN,
            "feat_gather_stride": knet.FEAT_GATHER_STRIDE,
            "mask_transform_stride": knet.MASK_TRANSFORM_STRIDE,
            "updator_in_channels": knet.UPDATOR_IN_CHANNELS,
            "updator_feat_channels": knet.UPDATOR_FEAT_CHANNELS,
            "updator_out_channels": knet.UPDATOR_OUT_CHANNELS,
        }

    def stage_logits(self, features) -> List[torch.Tensor]:
        """The logits of stage 0 (the generator) and of every update stage."""
        gen = self.kernel_generate_head
        feats = gen.layers(gen.transform_inputs(features))
        sem_seg = gen.cls_seg(feats)
        kernels = gen.conv_seg.weight  # the initial kernels, one per class
        kernels = kernels[None].expand(feats.size(0), *kernels.shape)
        stages = [sem_seg]
        for head in self.kernel_update_head:
            sem_seg, kernels = head(feats, kernels, sem_seg)
            stages.append(sem_seg)
        return stages

    def forward(self, features, targets: Optional[torch.Tensor] = None):
        stages = self.stage_logits(features)
        losses = self.losses(stages, targets) if targets is not None else {}
        return stages[-1], losses

    def losses(self, stages, targets):
        gen, last = self.kernel_generate_head, len(stages) - 1
        # mmseg's loss_ce.s{i}: the generator's loss on every stage; accuracy of the last
        return {f"{self.loss_name}_s{i}": gen.loss_on(logits, targets, log_accuracy=i == last)
                for i, logits in enumerate(stages)}
