"""PoolFormer (mmcls 0.25's ``PoolFormer``, as mmseg's ``fpn_poolformer_*`` configs use it) as a
Detectron2 backbone.

Module names are mmcls's (``patch_embed.proj``; ``network.{i}`` = stage blocks at even i and the
downsampling ``PatchEmbed`` at odd i; blocks with ``norm1``/``token_mixer``/``norm2``/``mlp.fc1``
/``mlp.fc2``/``layer_scale_1``/``layer_scale_2``; one GroupNorm(1) ``norm{i}`` per output), so
mmseg's PoolFormer checkpoints and mmcls's ImageNet weights (``backbone.*``) load unchanged.

Outputs are named by mmcls's ``out_indices`` (positions in ``network``, the same number as the
output norm): ``pf0``, ``pf2``, ``pf4``, ``pf6`` = stages 1..4 at strides 4, 8, 16, 32.
"""
from typing import Dict, Sequence

import torch
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ...checkpoint.backbones import WeightFormat, register_weight_format
from ...config import register_config_keys
from .mit import DropPath

__all__ = ["PoolFormer", "build_poolformer_backbone", "POOLFORMER_ARCHS"]

# mmcls's PoolFormer.arch_settings: blocks per stage, widths, MLP ratios, layer-scale init
POOLFORMER_ARCHS = {
    "s12": ([2, 2, 6, 2], [64, 128, 320, 512], [4, 4, 4, 4], 1e-5),
    "s24": ([4, 4, 12, 4], [64, 128, 320, 512], [4, 4, 4, 4], 1e-5),
    "s36": ([6, 6, 18, 6], [64, 128, 320, 512], [4, 4, 4, 4], 1e-6),
    "m36": ([6, 6, 18, 6], [96, 192, 384, 768], [4, 4, 4, 4], 1e-6),
    "m48": ([8, 8, 24, 8], [96, 192, 384, 768], [4, 4, 4, 4], 1e-6),
}


@register_config_keys
def add_poolformer_keys(keys):
    keys.MODEL.POOLFORMER = CN()
    # mmcls arch name (s12, s24, s36, m36, m48); "" = the custom LAYERS / EMBED_DIMS / ... below
    keys.MODEL.POOLFORMER.ARCH = "s12"
    keys.MODEL.POOLFORMER.LAYERS = []  # (ARCH "") blocks per stage
    keys.MODEL.POOLFORMER.EMBED_DIMS = []  # (ARCH "") widths per stage
    keys.MODEL.POOLFORMER.MLP_RATIOS = [4, 4, 4, 4]  # (ARCH "")
    keys.MODEL.POOLFORMER.LAYER_SCALE_INIT_VALUE = 1e-5  # (ARCH "")
    keys.MODEL.POOLFORMER.POOL_SIZE = 3
    keys.MODEL.POOLFORMER.IN_PATCH_SIZE = 7
    keys.MODEL.POOLFORMER.IN_STRIDE = 4
    keys.MODEL.POOLFORMER.IN_PAD = 2
    keys.MODEL.POOLFORMER.DOWN_PATCH_SIZE = 3
    keys.MODEL.POOLFORMER.DOWN_STRIDE = 2
    keys.MODEL.POOLFORMER.DOWN_PAD = 1
    keys.MODEL.POOLFORMER.DROP_RATE = 0.0
    keys.MODEL.POOLFORMER.DROP_PATH_RATE = 0.0  # dpr * block / (blocks - 1), as mmcls
    keys.MODEL.POOLFORMER.OUT_INDICES = [0, 2, 4, 6]  # positions in network -> pf0, pf2, ...
    # mmcls's frozen_stages: >= 0 freezes patch_embed (so mmseg's frozen_stages=0 does), and
    # network[0 .. n-1] with their output norms; -1 trains everything
    keys.MODEL.POOLFORMER.FROZEN_STAGES = 0


class PatchEmbed(nn.Module):
    """A plain strided conv (mmcls's PatchEmbed without its norm, which PoolFormer leaves out)."""

    def __init__(self, in_channels, embed_dim, patch_size, stride, padding):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride, padding)

    def forward(self, x):
        return self.proj(x)


class Pooling(nn.Module):
    """The token mixer: average of the k x k neighbours (padding not counted) minus the token."""

    def __init__(self, pool_size: int):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, 1, pool_size // 2, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PoolFormerBlock(nn.Module):
    def __init__(self, dim, pool_size, mlp_ratio, drop, drop_path, layer_scale_init_value):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.token_mixer = Pooling(pool_size)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        self.layer_scale_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))

    def forward(self, x):
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.token_mixer(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))


class PoolFormer(Backbone):
    """Patch embedding, then stages of PoolFormer blocks with a downsampling patch embedding
    between them; each output goes through its own GroupNorm(1) ``norm{i}``. From-scratch init
    is PyTorch's (mmcls's PoolFormer has no init of its own and mmseg's configs give it none
    besides the ImageNet checkpoint); layer scales start at ``layer_scale_init_value``."""

    def __init__(
        self,
        *,
        layers: Sequence[int],
        embed_dims: Sequence[int],
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        layer_scale_init_value: float = 1e-5,
        in_channels: int = 3,
        pool_size: int = 3,
        in_patch_size: int = 7,
        in_stride: int = 4,
        in_pad: int = 2,
        down_patch_size: int = 3,
        down_stride: int = 2,
        down_pad: int = 1,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        out_indices: Sequence[int] = (0, 2, 4, 6),
        frozen_stages: int = 0,
    ):
        super().__init__()
        if not layers or len(layers) != len(embed_dims) or len(mlp_ratios) != len(layers):
            raise ValueError(f"MODEL.POOLFORMER: LAYERS={list(layers)}, EMBED_DIMS="
                             f"{list(embed_dims)} and MLP_RATIOS={list(mlp_ratios)} need one "
                             "value per stage")
        if any(a == b for a, b in zip(embed_dims, embed_dims[1:])):
            # mmcls then leaves the downsampling out, and out_indices stop meaning stages
            raise ValueError(f"MODEL.POOLFORMER.EMBED_DIMS={list(embed_dims)}: consecutive "
                             "stages need different widths (mmcls downsamples only then)")
        positions = 2 * len(layers) - 1
        bad = [i for i in out_indices if not 0 <= i < positions]
        if bad or not out_indices:
            raise ValueError(f"MODEL.POOLFORMER.OUT_INDICES={list(out_indices)}: positions in "
                             f"network, 0..{positions - 1}")
        self.patch_embed = PatchEmbed(in_channels, embed_dims[0], in_patch_size, in_stride,
                                      in_pad)
        total = sum(layers)
        network = []
        for i, n in enumerate(layers):
            network.append(nn.Sequential(*(
                PoolFormerBlock(embed_dims[i], pool_size, mlp_ratios[i], drop_rate,
                                # mmcls's schedule (linspace over all blocks, as a division)
                                drop_path_rate * (j + sum(layers[:i])) / (total - 1),
                                layer_scale_init_value)
                for j in range(n))))
            if i < len(layers) - 1:
                network.append(PatchEmbed(embed_dims[i], embed_dims[i + 1], down_patch_size,
                                          down_stride, down_pad))
        self.network = nn.ModuleList(network)
        self.out_indices = sorted(set(out_indices))
        self._out_features = [f"pf{i}" for i in self.out_indices]
        self._out_feature_channels, self._out_feature_strides = {}, {}
        for i in self.out_indices:
            dim = embed_dims[(i + 1) // 2]
            self.add_module(f"norm{i}", nn.GroupNorm(1, dim))
            self._out_feature_channels[f"pf{i}"] = dim
            self._out_feature_strides[f"pf{i}"] = in_stride * down_stride ** ((i + 1) // 2)
        self.frozen_stages = frozen_stages
        self._freeze_stages()

    def _frozen_modules(self):
        if self.frozen_stages >= 0:
            yield self.patch_embed
        for i in range(min(self.frozen_stages, len(self.network))):
            yield self.network[i]
            if i in self.out_indices:
                yield getattr(self, f"norm{i}")

    def _freeze_stages(self):
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()  # frozen parts stay in eval mode, as mmcls
        return self

    def forward(self, x) -> Dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        outs = {}
        for i, block in enumerate(self.network[: self.out_indices[-1] + 1]):
            x = block(x)
            if i in self.out_indices:
                outs[f"pf{i}"] = getattr(self, f"norm{i}")(x)
        return outs
    # output_shape: Detectron2's Backbone default, from _out_feature_channels/_strides


@BACKBONE_REGISTRY.register()
def build_poolformer_backbone(cfg, input_shape: ShapeSpec) -> PoolFormer:
    """PoolFormer from MODEL.POOLFORMER (S12 by default; configs/_base_/models/
    fpn_poolformer_s12.yaml)."""
    node = cfg.MODEL.POOLFORMER
    args = {k.lower(): v for k, v in node.items()}
    arch = args.pop("arch")
    custom = {k: args.pop(k) for k in ("layers", "embed_dims", "mlp_ratios",
                                       "layer_scale_init_value")}
    if arch:
        if arch not in POOLFORMER_ARCHS:
            raise ValueError(f"MODEL.POOLFORMER.ARCH={arch!r} is not one of "
                             f"{sorted(POOLFORMER_ARCHS)} (or \"\" for LAYERS/EMBED_DIMS)")
        if custom["layers"] or custom["embed_dims"]:
            raise ValueError(f"MODEL.POOLFORMER: ARCH={arch!r} and LAYERS/EMBED_DIMS are both "
                             "set: set ARCH to \"\" for a custom architecture")
        custom = dict(zip(("layers", "embed_dims", "mlp_ratios", "layer_scale_init_value"),
                          POOLFORMER_ARCHS[arch]))
    return PoolFormer(in_channels=input_shape.channels, **custom, **args)


def convert_poolformer_official(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """sail-sg's PoolFormer keys -> mmcls's: the same names but the final ``norm`` (``norm6``,
    mmcls's out_indices=-1 norm, as in mmcls's 3rdparty files; mmcls ships no converter)."""
    last = max(int(k.split(".")[1]) for k in sd if k.startswith("network."))
    return {(f"norm{last}." + k[len("norm."):] if k.startswith("norm.") else k): v
            for k, v in sd.items()}


def _is_poolformer(sd) -> bool:
    return "patch_embed.proj.weight" in sd and "network.0.0.layer_scale_1" in sd


# the ImageNet classifier's output norm (norm6 for four stages) is the segmentation backbone's
# last output norm; norm0/2/4 keep their init, as in mmseg
_POOLFORMER_FILLS = ("backbone.patch_embed.", "backbone.network.", "backbone.norm6.")
register_weight_format(WeightFormat(
    "poolformer_official", "PoolFormer (sail-sg)",
    lambda sd: _is_poolformer(sd) and "norm.weight" in sd,
    convert=convert_poolformer_official, fills=_POOLFORMER_FILLS))
# mmcls's (``backbone.`` + these keys, read through the generic mmcls route)
register_weight_format(WeightFormat(
    "poolformer", "PoolFormer (mmcls)", lambda sd: _is_poolformer(sd) and "norm.weight" not in sd,
    fills=_POOLFORMER_FILLS))
