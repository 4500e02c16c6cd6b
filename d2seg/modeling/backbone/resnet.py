"""Dilated ResNet on Detectron2's blocks, in both of mmseg's styles.

- pytorch style, mmseg's ResNetV1c: deep stem (3 x conv3x3 32-32-64), stride on the 3x3 conv
  (``STEM_TYPE="deeplab"``, ``STRIDE_IN_1X1=False``);
- caffe style, Detectron2's MSRA layout: 7x7 stem, stride on the first 1x1 conv
  (``STEM_TYPE="basic"``, ``STRIDE_IN_1X1=True``), whose module names match
  ``detectron2://ImageNetPretrained/MSRA/R-50.pkl`` so DetectionCheckpointer loads it as is.

Output stride 8/16/32 comes from per-stage strides and dilations (``STAGE_STRIDES``,
``STAGE_DILATIONS``); like mmseg's ``contract_dilation`` the first block of a dilated stage uses
half the dilation; mmseg's ``multi_grid`` (``RES5_DILATION_PER_BLOCK``) sets res5's per-block dilations.
"""
from typing import Optional

from torch import nn
import torch.nn.functional as F

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, CNNBlockBase, ResNet

from ...checkpoint.catalog import register_imagenet_weights_rule

__all__ = ["DeepStem", "DilatedBasicBlock", "build_dilated_resnet_backbone", "RESNET_BLOCKS",
           "init_like_mmseg"]

# depth -> (blocks per stage, bottleneck?)
RESNET_BLOCKS = {
    18: ([2, 2, 2, 2], False),
    34: ([3, 4, 6, 3], False),
    50: ([3, 4, 6, 3], True),
    101: ([3, 4, 23, 3], True),
    152: ([3, 8, 36, 3], True),
}


class DeepStem(CNNBlockBase):
    """ResNetV1c stem: conv3x3/2 (C/2) - conv3x3 (C/2) - conv3x3 (C), each with norm + ReLU, then
    a 3x3/2 max pool."""

    def __init__(self, in_channels=3, out_channels=64, norm="BN"):
        super().__init__(in_channels, out_channels, 4)
        mid = out_channels // 2
        widths = [(in_channels, mid, 2), (mid, mid, 1), (mid, out_channels, 1)]
        for i, (cin, cout, stride) in enumerate(widths, start=1):
            conv = Conv2d(
                cin, cout, 3, stride=stride, padding=1, bias=False, norm=get_norm(norm, cout),
                activation=F.relu,
            )
            self.add_module(f"conv{i}", conv)

    def forward(self, x):
        x = self.conv3(self.conv2(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DilatedBasicBlock(CNNBlockBase):
    """ResNet-18/34 block with mmseg's dilation: the first 3x3 conv is dilated, the second not."""

    def __init__(self, in_channels, out_channels, *, stride=1, norm="BN", dilation=1, **_unused):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(
                in_channels, out_channels, 1, stride=stride, bias=False,
                norm=get_norm(norm, out_channels),
            )
        self.conv1 = Conv2d(
            in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation,
            bias=False, norm=get_norm(norm, out_channels), activation=F.relu,
        )
        self.conv2 = Conv2d(
            out_channels, out_channels, 3, padding=1, bias=False, norm=get_norm(norm, out_channels)
        )

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


def _stage_dilations(num_blocks: int, dilation: int, contract: bool):
    first = dilation // 2 if (contract and dilation > 1) else dilation
    return [first] + [dilation] * (num_blocks - 1)


def init_like_mmseg(resnet: nn.Module, zero_init_residual: bool = True) -> nn.Module:
    """mmseg's ResNet initialisation without a checkpoint (what training from scratch starts
    from): Kaiming-normal (fan_out, relu) convs, norms at weight 1 / bias 0, then, with
    ``zero_init_residual`` (mmseg's default), each block's last norm at 0, so every residual
    branch starts as the identity. Detectron2's blocks already use Kaiming fan_out, but the deep
    stem kept PyTorch's default and no norm started at 0."""
    for m in resnet.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in resnet.modules():
            last = {BottleneckBlock: "conv3", DilatedBasicBlock: "conv2"}.get(type(m))
            norm = getattr(getattr(m, last, None), "norm", None) if last else None
            if norm is not None and getattr(norm, "weight", None) is not None:
                nn.init.zeros_(norm.weight)
                nn.init.zeros_(norm.bias)
    return resnet


@register_imagenet_weights_rule("build_dilated_resnet_backbone", "build_icnet_backbone")
def resnet_imagenet_weights(cfg) -> Optional[str]:
    """ResNet-18/50/101 of MODEL.RESNETS with mmseg's widths (also inside ICNet): deep stem -> ``open-mmlab://resnet{d}_v1c``, torchvision's -> ``torchvision://``."""
    r = cfg.MODEL.RESNETS
    expansion = 1 if r.DEPTH in (18, 34) else 4
    standard = (r.STEM_OUT_CHANNELS == 64 and r.NUM_GROUPS == 1 and r.WIDTH_PER_GROUP == 64
                and r.RES2_OUT_CHANNELS == 64 * expansion)
    if standard and r.DEPTH in (18, 50, 101):
        if r.STEM_TYPE == "deeplab":
            return f"open-mmlab://resnet{r.DEPTH}_v1c"
        if r.STEM_TYPE == "basic" and not r.STRIDE_IN_1X1:
            return f"torchvision://resnet{r.DEPTH}"
    return None


@BACKBONE_REGISTRY.register()
def build_dilated_resnet_backbone(cfg, input_shape: ShapeSpec):
    """ResNet-18/34/50/101/152 with mmseg's dilation scheme; outputs ``RESNETS.OUT_FEATURES``."""
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in RESNET_BLOCKS:
        raise ValueError(f"MODEL.RESNETS.DEPTH={r.DEPTH} is not one of {sorted(RESNET_BLOCKS)}")
    if len(r.STAGE_STRIDES) != 4 or len(r.STAGE_DILATIONS) != 4:
        raise ValueError(
            "MODEL.RESNETS.STAGE_STRIDES and STAGE_DILATIONS need 4 values (res2..res5), got "
            f"{list(r.STAGE_STRIDES)} and {list(r.STAGE_DILATIONS)}"
        )
    stems = {"deeplab": DeepStem, "basic": BasicStem}
    if r.STEM_TYPE not in stems:
        hint = " (d2seg's 'deep' is now spelled 'deeplab', as Detectron2's DeepLab)" if r.STEM_TYPE == "deep" else ""
        raise ValueError(f"MODEL.RESNETS.STEM_TYPE={r.STEM_TYPE!r} is not one of {sorted(stems)}{hint}")
    stem = stems[r.STEM_TYPE](input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)

    num_blocks, bottleneck = RESNET_BLOCKS[r.DEPTH]
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    multi_grid = list(r.RES5_DILATION_PER_BLOCK)
    if multi_grid and len(multi_grid) < num_blocks[-1]:
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION_PER_BLOCK={multi_grid} needs one dilation per res5 block "
                         f"({num_blocks[-1]} for depth {r.DEPTH})")
    stages = []
    for i, (n, stride, dilation) in enumerate(zip(num_blocks, r.STAGE_STRIDES, r.STAGE_DILATIONS)):
        if multi_grid and i == 3:  # mmseg: multi_grid replaces res5's dilations outright
            dilations = multi_grid[:n]
        else:
            dilations = _stage_dilations(n, dilation, r.CONTRACT_DILATION)
        kwargs = dict(
            num_blocks=n,
            in_channels=in_channels,
            out_channels=out_channels,
            norm=r.NORM,
            stride_per_block=[stride] + [1] * (n - 1),
            dilation_per_block=dilations,
        )
        if bottleneck:
            kwargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=bottleneck_channels,
                num_groups=r.NUM_GROUPS,
                stride_in_1x1=r.STRIDE_IN_1X1,
            )
            bottleneck_channels *= 2
        else:
            kwargs.update(block_class=DilatedBasicBlock)
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels *= 2
    resnet = init_like_mmseg(ResNet(stem, stages, out_features=r.OUT_FEATURES),
                             zero_init_residual=r.ZERO_INIT_RESIDUAL)
    return resnet.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
