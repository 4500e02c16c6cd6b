"""ERFNet (mmseg's ``ERFNet``) as a Detectron2 backbone with one output, ``decoder`` (the
decoder's last non-bottleneck block, stride 2): mmseg's single output, which its FCNHead reads.

Module names and nesting are mmseg's (``encoder.{i}``, ``decoder.{i}``, non-bottleneck blocks'
``convs_layers.{j}``). mmseg's down/upsampler blocks hold ``conv`` and ``bn``, which the generic
ConvModule rules of d2seg/checkpoint/mmseg.py rename to ``weight``/``bias`` and ``norm``: so here
those blocks *are* their conv (an ``nn.Conv2d`` / ``nn.ConvTranspose2d`` subclass) with a
``norm``, and an mmseg checkpoint loads through SegCheckpointer unchanged.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...config import register_config_keys
from ..layers.norm import norm_with

__all__ = ["ERFNet", "DownsamplerBlock", "NonBottleneck1d", "UpsamplerBlock",
           "build_erfnet_backbone"]


@register_config_keys
def add_erfnet_keys(keys):
    # mmseg configs/_base_/models/erfnet_fcn.py. mmseg's enc_non_bottleneck_channels and
    # dec_upsample_channels only have their lengths checked (the widths come from the two
    # lists below), so they have no key here.
    keys.MODEL.ERFNET = CN()
    keys.MODEL.ERFNET.ENC_DOWNSAMPLE_CHANNELS = [16, 64, 128]
    # blocks after each downsampler but the first; the last stage cycles through the dilations
    keys.MODEL.ERFNET.ENC_STAGE_NON_BOTTLENECKS = [5, 8]
    keys.MODEL.ERFNET.ENC_NON_BOTTLENECK_DILATIONS = [2, 4, 8, 16]
    keys.MODEL.ERFNET.DEC_STAGES_NON_BOTTLENECK = [2, 2]  # after each upsampler
    keys.MODEL.ERFNET.DEC_NON_BOTTLENECK_CHANNELS = [64, 16]  # each upsampler's output
    keys.MODEL.ERFNET.DROPOUT = 0.1  # the encoder's non-bottleneck blocks (the decoder's: 0)
    # mmseg 0.30 builds every block norm as BN eps 1e-3 and ignores its norm_cfg
    keys.MODEL.ERFNET.NORM = "BN"
    keys.MODEL.ERFNET.NORM_EPS = 1e-3
    keys.MODEL.ERFNET.NORM_MOMENTUM = 0.0  # 0 = the norm layer's default


class DownsamplerBlock(nn.Conv2d):
    """[3x3 s2 conv to ``out - in`` channels || 2x2 max-pool], concatenated -> norm -> ReLU.
    The module is its conv (mmseg's ``conv``) and holds the norm (mmseg's ``bn``) in ``norm``;
    the norm spans the concatenation, so it cannot be folded into the conv."""

    def __init__(self, in_channels: int, out_channels: int, norm):
        if out_channels <= in_channels:
            raise ValueError(f"ERFNet: a downsampler must widen its input, got {in_channels} -> "
                             f"{out_channels} (ENC_DOWNSAMPLE_CHANNELS must increase from the "
                             "input's channels)")
        super().__init__(in_channels, out_channels - in_channels, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.norm = get_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = super().forward(x)
        # at odd sizes the pool (floor) is one smaller than the conv (ceil): mmseg resizes it
        pool = F.interpolate(self.pool(x), size=conv.shape[2:], mode="bilinear",
                             align_corners=False)
        return F.relu(self.norm(torch.cat([conv, pool], dim=1)))


class NonBottleneck1d(nn.Module):
    """Two factorised 3x3s: 3x1 -> ReLU -> 1x3 -> norm -> ReLU -> 3x1 (dilated) -> ReLU -> 1x3
    (dilated) -> norm -> dropout, plus the input, ReLU. ``convs_layers`` keeps mmseg's indices
    (convs at 0, 2, 5, 7; norms at 3, 8); as a Sequential, fuse_conv_bn folds each norm."""

    def __init__(self, channels: int, norm, drop_rate: float = 0.0, dilation: int = 1,
                 num_conv_layer: int = 2):
        super().__init__()
        layers = []
        for i in range(num_conv_layer):
            d = 1 if i == 0 else dilation
            layers += [
                nn.Conv2d(channels, channels, (3, 1), padding=(d, 0), dilation=(d, 1)),
                nn.ReLU(),
                nn.Conv2d(channels, channels, (1, 3), padding=(0, d), dilation=(1, d)),
                get_norm(norm, channels),
                nn.ReLU() if i == 0 else nn.Dropout(p=drop_rate),
            ]
        self.convs_layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.convs_layers(x) + x)


class UpsamplerBlock(nn.ConvTranspose2d):
    """3x3 s2 transposed conv (exactly 2x the size) -> norm -> ReLU; the module is its conv
    (mmseg's ``conv``) and holds the norm (mmseg's ``bn``) in ``norm``."""

    def __init__(self, in_channels: int, out_channels: int, norm):
        super().__init__(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
        self.norm = get_norm(norm, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(super().forward(x)))


class ERFNet(Backbone):
    """mmseg's ERFNet. mmseg gives it no ``init_cfg``: PyTorch's default init (convs Kaiming
    uniform a=sqrt(5), norms 1/0), which the plain nn layers here keep."""

    def __init__(self, in_channels: int = 3, *, enc_downsample_channels=(16, 64, 128),
                 enc_stage_non_bottlenecks=(5, 8), enc_non_bottleneck_dilations=(2, 4, 8, 16),
                 dec_stages_non_bottleneck=(2, 2), dec_non_bottleneck_channels=(64, 16),
                 dropout: float = 0.1, norm="BN"):
        super().__init__()
        enc, stages = list(enc_downsample_channels), list(enc_stage_non_bottlenecks)
        dilations = list(enc_non_bottleneck_dilations)
        dec_stages, dec = list(dec_stages_non_bottleneck), list(dec_non_bottleneck_channels)
        if len(enc) < 2 or len(stages) != len(enc) - 1:
            raise ValueError(f"ERFNet: ENC_STAGE_NON_BOTTLENECKS={stages} needs one value fewer "
                             f"than ENC_DOWNSAMPLE_CHANNELS={enc} (at least 2)")
        if not dilations or stages[-1] % len(dilations):
            raise ValueError(f"ERFNet: ENC_STAGE_NON_BOTTLENECKS[-1]={stages[-1]} must be a "
                             f"multiple of len(ENC_NON_BOTTLENECK_DILATIONS={dilations})")
        if len(dec_stages) != len(dec) or len(dec) != len(enc) - 1:
            raise ValueError(f"ERFNet: DEC_STAGES_NON_BOTTLENECK={dec_stages} and "
                             f"DEC_NON_BOTTLENECK_CHANNELS={dec} need one value fewer than "
                             f"ENC_DOWNSAMPLE_CHANNELS={enc} each")
        self.encoder = nn.ModuleList([DownsamplerBlock(in_channels, enc[0], norm)])
        for i in range(len(enc) - 1):
            self.encoder.append(DownsamplerBlock(enc[i], enc[i + 1], norm))
            if i < len(enc) - 2:
                self.encoder.extend(NonBottleneck1d(enc[i + 1], norm, dropout)
                                    for _ in range(stages[i]))
            else:  # the last stage: the dilations in turn, stages[-1] blocks
                self.encoder.extend(NonBottleneck1d(enc[-1], norm, dropout, d)
                                    for _ in range(stages[-1] // len(dilations))
                                    for d in dilations)
        self.decoder = nn.ModuleList()
        for i, (width, n) in enumerate(zip(dec, dec_stages)):
            self.decoder.append(UpsamplerBlock(enc[-1] if i == 0 else dec[i - 1], width, norm))
            self.decoder.extend(NonBottleneck1d(width, norm) for _ in range(n))
        self._out_features = ["decoder"]
        self._out_feature_channels = {"decoder": dec[-1]}
        self._out_feature_strides = {"decoder": 2 ** (len(enc) - len(dec))}

    def forward(self, x: torch.Tensor):
        for block in self.encoder:
            x = block(x)
        for block in self.decoder:
            x = block(x)
        return {"decoder": x}


@BACKBONE_REGISTRY.register()
def build_erfnet_backbone(cfg, input_shape: ShapeSpec) -> ERFNet:
    """ERFNet from MODEL.ERFNET (see configs/_base_/models/erfnet_fcn.yaml)."""
    c = cfg.MODEL.ERFNET
    return ERFNet(
        input_shape.channels,
        enc_downsample_channels=c.ENC_DOWNSAMPLE_CHANNELS,
        enc_stage_non_bottlenecks=c.ENC_STAGE_NON_BOTTLENECKS,
        enc_non_bottleneck_dilations=c.ENC_NON_BOTTLENECK_DILATIONS,
        dec_stages_non_bottleneck=c.DEC_STAGES_NON_BOTTLENECK,
        dec_non_bottleneck_channels=c.DEC_NON_BOTTLENECK_CHANNELS,
        dropout=c.DROPOUT,
        norm=norm_with(c.NORM, c.NORM_EPS, c.NORM_MOMENTUM),
    )
