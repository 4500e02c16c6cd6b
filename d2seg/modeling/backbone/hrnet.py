"""HRNetV2 (mmseg's ``HRNet``) as a Detectron2 backbone with outputs ``hr1``..``hr4``.

Module names and nesting are mmseg's (``conv1``/``bn1`` stem, ``layer1``, ``transition{1,2,3}``,
``stage{2,3,4}.{m}.branches`` / ``.fuse_layers``, blocks with ``conv1``/``bn1``/.../``downsample``),
so an mmseg (or open-mmlab HRNet ImageNet) state_dict loads with its keys unchanged. The blocks
are written here rather than taken from Detectron2 because Detectron2's carry other names.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...checkpoint.catalog import register_imagenet_weights_rule
from ...export.tracing import is_exporting

__all__ = ["BasicBlock", "Bottleneck", "HRModule", "HRNet", "build_hrnet_backbone"]


def _conv(cin, cout, k, stride=1):
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def _conv_norm(cin, cout, k, norm, stride=1, relu=False):
    layers = [_conv(cin, cout, k, stride), get_norm(norm, cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """mmseg's ResNet BasicBlock (3x3 - 3x3, stride/dilation 1 as HRNet uses it)."""

    expansion = 1

    def __init__(self, in_channels, planes, norm):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = _conv(in_channels, planes, 3)
        self.bn1 = get_norm(norm, planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = get_norm(norm, planes)
        self.downsample = _conv_norm(in_channels, out, 1, norm) if in_channels != out else None

    def forward(self, x):
        # in-place ReLU/add on fresh tensors, as mmseg (inplace=True, out += identity)
        out = self.bn2(self.conv2(F.relu_(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return F.relu_(out)


class Bottleneck(nn.Module):
    """mmseg's ResNet Bottleneck (1x1 - 3x3 - 1x1, expansion 4, stride 1 as in HRNet's layer1)."""

    expansion = 4

    def __init__(self, in_channels, planes, norm):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = _conv(in_channels, planes, 1)
        self.bn1 = get_norm(norm, planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = get_norm(norm, planes)
        self.conv3 = _conv(planes, out, 1)
        self.bn3 = get_norm(norm, out)
        self.downsample = _conv_norm(in_channels, out, 1, norm) if in_channels != out else None

    def forward(self, x):
        out = F.relu_(self.bn1(self.conv1(x)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return F.relu_(out)


def _make_layer(block, in_channels: int, planes: int, num_blocks: int, norm: str) -> nn.Sequential:
    layers = []
    for _ in range(num_blocks):
        layers.append(block(in_channels, planes, norm))
        in_channels = planes * block.expansion
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """Parallel branches of ``num_blocks`` blocks each, then every output branch sums all
    branches brought to its resolution (``fuse_layers[i][j]``: 1x1 conv + norm + bilinear
    upsampling for a coarser j; chains of 3x3/2 conv + norm (+ ReLU but the last) for a finer
    j; None for j == i)."""

    def __init__(self, channels: Sequence[int], num_blocks: int, norm: str):
        super().__init__()
        n = len(channels)
        self.branches = nn.ModuleList(
            [_make_layer(BasicBlock, c, c, num_blocks, norm) for c in channels]
        )
        self.fuse_layers = None
        if n > 1:
            self.fuse_layers = nn.ModuleList()
            for i in range(n):
                row = []
                for j in range(n):
                    if j > i:
                        row.append(_conv_norm(channels[j], channels[i], 1, norm))
                    elif j == i:
                        row.append(None)
                    else:
                        row.append(nn.Sequential(*[
                            _conv_norm(channels[j], channels[i] if k == i - j - 1 else channels[j],
                                       3, norm, stride=2, relu=k < i - j - 1)
                            for k in range(i - j)
                        ]))
                self.fuse_layers.append(nn.ModuleList(row))

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        outs = []
        for i, row in enumerate(self.fuse_layers):
            # sum in mmseg's order (j ascending), in place once y is a fresh tensor
            y, owned = None, False
            for j, x in enumerate(xs):
                if j == i:
                    z = x
                elif j > i:
                    # mmseg upsamples by the integer factor 2**(j-i) (its Upsample module),
                    # then resizes to the target size: two steps when sizes are odd (the
                    # second is skipped when the size already matches: it would be a copy).
                    z = row[j](x)
                    # (no int() and no size test while exporting: both would freeze the
                    # example's sizes into the graph; a same-size resize is the identity)
                    z = F.interpolate(
                        z, size=[t * 2 ** (j - i) for t in z.shape[-2:]],
                        mode="bilinear", align_corners=False,
                    )
                    if is_exporting() or z.shape[2:] != xs[i].shape[2:]:
                        z = F.interpolate(z, size=xs[i].shape[2:], mode="bilinear",
                                          align_corners=False)
                else:
                    z = row[j](x)
                if y is None:
                    y, owned = z, j != i
                elif owned:
                    y += z
                else:
                    y, owned = y + z, True
            outs.append(F.relu_(y) if owned else F.relu(y))
        return outs


class HRNet(Backbone):
    """HRNetV2: stem (two 3x3/2 convs) -> ``layer1`` (Bottlenecks) -> stages 2-4 of HR modules
    with 2, 3, 4 branches; ``transition{k}`` adapts/creates branches between stages."""

    def __init__(
        self,
        *,
        in_channels: int = 3,
        stage1_channels: int = 64,
        branch_channels: Sequence[int] = (18, 36, 72, 144),
        num_modules: Sequence[int] = (1, 1, 4, 3),
        num_blocks: Sequence[int] = (4, 4, 4, 4),
        norm: str = "BN",
        out_features: Sequence[str] = ("hr1", "hr2", "hr3", "hr4"),
    ):
        super().__init__()
        if len(branch_channels) != 4 or len(num_modules) != 4 or len(num_blocks) != 4:
            raise ValueError(
                "HRNet needs 4 values in BRANCH_CHANNELS, NUM_MODULES and NUM_BLOCKS, got "
                f"{list(branch_channels)}, {list(num_modules)}, {list(num_blocks)}"
            )
        if num_modules[0] != 1:
            raise ValueError(f"HRNet stage 1 is a single layer: NUM_MODULES[0] must be 1, "
                             f"got {num_modules[0]}")
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = get_norm(norm, 64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = get_norm(norm, 64)
        self.layer1 = _make_layer(Bottleneck, 64, stage1_channels, num_blocks[0], norm)

        pre = [stage1_channels * Bottleneck.expansion]
        for s in range(2, 5):
            cur = list(branch_channels[:s])
            setattr(self, f"transition{s - 1}", self._transition(pre, cur, norm))
            setattr(self, f"stage{s}", nn.Sequential(
                *[HRModule(cur, num_blocks[s - 1], norm) for _ in range(num_modules[s - 1])]
            ))
            pre = cur

        names = [f"hr{i + 1}" for i in range(4)]
        unknown = [f for f in out_features if f not in names]
        if unknown:
            raise ValueError(f"HRNet OUT_FEATURES {unknown} are not among {names}")
        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(names, branch_channels))
        self._out_feature_strides = {n: 2 ** (i + 2) for i, n in enumerate(names)}
        self._init_weights()

    @staticmethod
    def _transition(pre: List[int], cur: List[int], norm: str) -> nn.ModuleList:
        """Existing branches: a 3x3 conv where the width changes (else None); each new branch:
        3x3/2 convs from the coarsest previous branch."""
        layers = []
        for i, c in enumerate(cur):
            if i < len(pre):
                layers.append(_conv_norm(pre[i], c, 3, norm, relu=True) if pre[i] != c else None)
            else:
                n = i + 1 - len(pre)
                layers.append(nn.Sequential(*[
                    _conv_norm(pre[-1], c if k == n - 1 else pre[-1], 3, norm, stride=2, relu=True)
                    for k in range(n)
                ]))
        return nn.ModuleList(layers)

    def _init_weights(self):
        # mmseg's HRNet init_cfg without a checkpoint: Kaiming (fan_out, relu) convs, norms 1/0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu_(self.bn1(self.conv1(x)))
        x = F.relu_(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for s in range(2, 5):
            transition = getattr(self, f"transition{s - 1}")
            # Existing branches pass through (or through their width conv); new branches are
            # made from the coarsest previous output.
            xs = [
                ys[i] if t is None else t(ys[i] if i < len(ys) else ys[-1])
                for i, t in enumerate(transition)
            ]
            ys = getattr(self, f"stage{s}")(xs)
        return {f"hr{i + 1}": y for i, y in enumerate(ys) if f"hr{i + 1}" in self._out_features}

    def output_shape(self):
        return {
            n: ShapeSpec(
                channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]
            )
            for n in self._out_features
        }


@register_imagenet_weights_rule("build_hrnet_backbone")
def hrnet_imagenet_weights(cfg) -> Optional[str]:
    """HRNetV2 W18-Small / W18 / W48 (mmseg's widths) -> ``open-mmlab://msra/hrnetv2_w..``."""
    h = cfg.MODEL.HRNET
    width = h.BRANCH_CHANNELS[0]
    if list(h.BRANCH_CHANNELS) != [width * 2 ** i for i in range(4)] or h.STAGE1_CHANNELS != 64:
        return None
    modules, blocks = list(h.NUM_MODULES), list(h.NUM_BLOCKS)
    if width == 18 and modules == [1, 1, 3, 2] and blocks == [2, 2, 2, 2]:
        return "open-mmlab://msra/hrnetv2_w18_small"
    if width in (18, 48) and modules == [1, 1, 4, 3] and blocks == [4, 4, 4, 4]:
        return f"open-mmlab://msra/hrnetv2_w{width}"
    return None


@BACKBONE_REGISTRY.register()
def build_hrnet_backbone(cfg, input_shape: ShapeSpec) -> HRNet:
    """HRNetV2 from MODEL.HRNET (W18 by default; see configs/_base_/models/fcn_hr18s/48.yaml)."""
    c = cfg.MODEL.HRNET
    return HRNet(
        in_channels=input_shape.channels,
        stage1_channels=c.STAGE1_CHANNELS,
        branch_channels=c.BRANCH_CHANNELS,
        num_modules=c.NUM_MODULES,
        num_blocks=c.NUM_BLOCKS,
        norm=c.NORM,
        out_features=c.OUT_FEATURES,
    )
