"""ICNet (mmseg's ``ICNet`` backbone, mmseg/models/backbones/icnet.py) as a Detectron2 backbone
with outputs ``sub1`` (light branch on the full image, stride 8), ``sub2`` (ResNet stem ..
layer2 on the image at 1/2, stride 16) and ``sub4`` (layer3, layer4 and PPM on that map at 1/2,
stride 32): mmseg's three outputs, in its order, read by ``ICNeck`` (d2seg/modeling/necks).

The ResNet is d2seg's (build_dilated_resnet_backbone, MODEL.RESNETS: mmseg's ResNetV1c-D8 with
the deeplab stem) at ``backbone.backbone``, as mmseg nests its ``backbone_cfg``; ICNet's own
modules keep mmseg's names (``psp_modules``, ``psp_bottleneck``, ``conv_sub{1,2,4}``), so an mmseg
checkpoint converts with the generic ResNet / ConvModule rules (d2seg/checkpoint/mmseg.py), and
``open-mmlab://resnet*_v1c`` ImageNet weights load into the nested ResNet (formats below).
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...checkpoint.backbones import WeightFormat, register_weight_format
from ...config import register_config_keys
from ..layers.conv import conv_norm_act
from ..layers.ppm import PPM
from .resnet import DeepStem, build_dilated_resnet_backbone

__all__ = ["ICNet", "build_icnet_backbone"]

FEATURES = ("sub1", "sub2", "sub4")


@register_config_keys
def add_icnet_keys(keys):
    # mmseg configs/_base_/models/icnet_r50-d8.py (the ResNet itself: MODEL.RESNETS)
    keys.MODEL.ICNET = CN()
    keys.MODEL.ICNET.LAYER_CHANNELS = [512, 2048]  # ResNet layer2 / layer4 widths; R-18: [128, 512]
    keys.MODEL.ICNET.LIGHT_BRANCH_MIDDLE_CHANNELS = 32
    keys.MODEL.ICNET.PSP_OUT_CHANNELS = 512
    keys.MODEL.ICNET.OUT_CHANNELS = [64, 256, 256]  # sub1, sub2, sub4
    keys.MODEL.ICNET.POOL_SCALES = [1, 2, 3, 6]
    keys.MODEL.ICNET.NORM = "SyncBN"  # ICNet's own convs (the ResNet's: MODEL.RESNETS.NORM)
    keys.MODEL.ICNET.ALIGN_CORNERS = False


class ICNet(Backbone):
    """mmseg's ``ICNet`` around a d2seg ResNet ``resnet`` (stem, res2..res5 = mmseg's stem,
    layer1..4). The stem's max pool is replaced by a ``ceil_mode`` one, as mmseg does (odd
    grids: a 512x1024 input gives sub2 at 33x65)."""

    def __init__(self, resnet: nn.Module, in_channels: int = 3, *, layer_channels=(512, 2048),
                 light_branch_middle_channels: int = 32, psp_out_channels: int = 512,
                 out_channels=(64, 256, 256), pool_scales=(1, 2, 3, 6), norm="BN",
                 align_corners: bool = False):
        super().__init__()
        if len(layer_channels) != 2 or len(out_channels) != 3:
            raise ValueError(f"MODEL.ICNET.LAYER_CHANNELS={list(layer_channels)} needs 2 values "
                             f"and OUT_CHANNELS={list(out_channels)} 3")
        widths = {n: resnet.output_shape()[n].channels for n in ("res3", "res5")
                  if n in resnet.output_shape()}
        if widths != {"res3": layer_channels[0], "res5": layer_channels[1]}:
            raise ValueError(f"MODEL.ICNET.LAYER_CHANNELS={list(layer_channels)} must be the "
                             f"ResNet's res3 / res5 widths {widths} (MODEL.RESNETS.OUT_FEATURES "
                             "must include res3 and res5)")
        self.align_corners = align_corners
        self.backbone = resnet
        self.psp_modules = PPM(pool_scales, layer_channels[1], psp_out_channels, norm=norm,
                               align_corners=align_corners)
        self.psp_bottleneck = conv_norm_act(
            layer_channels[1] + len(pool_scales) * psp_out_channels, psp_out_channels, 3,
            norm=norm)
        mid = light_branch_middle_channels
        self.conv_sub1 = nn.Sequential(*[
            conv_norm_act(cin, cout, 3, norm=norm, stride=2)
            for cin, cout in ((in_channels, mid), (mid, mid), (mid, out_channels[0]))])
        self.conv_sub2 = conv_norm_act(layer_channels[0], out_channels[1], 1, norm=norm)
        self.conv_sub4 = conv_norm_act(psp_out_channels, out_channels[2], 1, norm=norm)
        self._out_features = list(FEATURES)
        self._out_feature_channels = dict(zip(FEATURES, out_channels))
        self._out_feature_strides = dict(zip(FEATURES, (8, 16, 32)))

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.backbone.stem
        if isinstance(stem, DeepStem):
            x = stem.conv3(stem.conv2(stem.conv1(x)))
        else:  # Detectron2's BasicStem (ResNetV1b / torchvision): its ReLU is in forward
            x = F.relu(stem.conv1(x))
        # mmseg: ceil_mode "to keep information in the corner of feature map"
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)

    def _half(self, x: torch.Tensor) -> torch.Tensor:
        # scale_factor (not a size): at odd sizes bilinear sampling differs, and mmseg uses 0.5
        return F.interpolate(x, scale_factor=0.5, mode="bilinear",
                             align_corners=self.align_corners)

    def forward(self, x: torch.Tensor):
        sub1 = self.conv_sub1(x)
        r = self.backbone
        x = r.res3(r.res2(self._stem(self._half(x))))
        sub2 = self.conv_sub2(x)
        x = r.res5(r.res4(self._half(x)))
        x = self.psp_bottleneck(torch.cat([*self.psp_modules(x), x], dim=1))  # mmseg's order
        return dict(zip(FEATURES, (sub1, sub2, self.conv_sub4(x))))


@BACKBONE_REGISTRY.register()
def build_icnet_backbone(cfg, input_shape: ShapeSpec) -> ICNet:
    """ICNet from MODEL.ICNET on the ResNet of MODEL.RESNETS (configs/_base_/models/
    icnet_r50-d8.yaml); MODEL.BACKBONE.FREEZE_AT freezes the ResNet's stages as for a plain one."""
    c = cfg.MODEL.ICNET
    return ICNet(
        build_dilated_resnet_backbone(cfg, input_shape),
        input_shape.channels,
        layer_channels=c.LAYER_CHANNELS,
        light_branch_middle_channels=c.LIGHT_BRANCH_MIDDLE_CHANNELS,
        psp_out_channels=c.PSP_OUT_CHANNELS,
        out_channels=c.OUT_CHANNELS,
        pool_scales=c.POOL_SCALES,
        norm=c.NORM,
        align_corners=c.ALIGN_CORNERS,
    )


# ImageNet ResNets (mmseg's in1k-pre configs: backbone_cfg init_cfg open-mmlab://resnet*_v1c)
# fill the ResNet nested in ICNet, and only for a model that has one; the same files still load
# into a plain ResNet backbone at ``backbone.``
for _fmt in (
    WeightFormat("icnet_resnet_v1c", "open-mmlab ResNetV1c (in ICNet)",
                 lambda sd: "stem.0.weight" in sd and any(k.startswith("layer1.") for k in sd),
                 model_prefix="backbone.backbone.", is_resnet=True,
                 model_has="backbone.psp_bottleneck."),
    WeightFormat("icnet_resnet", "torchvision ResNet (in ICNet)",
                 lambda sd: "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd),
                 model_prefix="backbone.backbone.", is_resnet=True,
                 model_has="backbone.psp_bottleneck."),
):
    register_weight_format(_fmt)
