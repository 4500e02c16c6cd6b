"""mmcv's and mmseg's optimiser constructors as parameter groups for torch's optimisers.

- SOLVER.PARAMWISE is mmcv 1.7's ``DefaultOptimizerConstructor`` with a ``paramwise_cfg``
  (``mmcv/runner/optimizer/default_constructor.py``): ``custom_keys`` and the bias / norm /
  depthwise-conv multipliers (SegFormer, Swin, ViT, Twins, SETR, DPT configs).
- SOLVER.LR_DECAY is mmseg 0.30's ``LearningRateDecayOptimizerConstructor`` ("stage_wise",
  "layer_wise") and ``LayerDecayOptimizerConstructor`` ("layer_decay")
  (``mmseg/core/optimizers/layer_decay_optimizer_constructor.py``; ConvNeXt, BEiT, MAE configs).

Names. Keys are matched against each parameter's name in d2seg's model, read as mmseg would name
it: a Detectron2 ``Conv2d``'s ``.norm`` (mmcv ``ConvModule``'s ``.bn``/``.gn``, see
d2seg/checkpoint/mmseg.py) is matched as ``.bn``/``.gn``, and an OCR cascade's ``cascade_head`` /
``decode_head`` as mmseg's ``decode_head.0`` / ``decode_head.1``. So mmseg's ``norm`` key hits
the transformer LayerNorms but not the heads' BNs, as in mmseg, and ``head`` hits ``decode_head``
and ``auxiliary_heads.N``. Other names are d2seg's: the ResNet backbone keeps Detectron2's
(``res2``..``res5``, not ``layer1``..``layer4``); MiT (and the transformer backbones that mirror
mmseg's modules) keep mmseg's, which the layer-id functions below read (``backbone.stages.N``,
``backbone.downsample_layers.N``, ``backbone.layers.N``, ``backbone.patch_embed``, tokens).

With either in use, Detectron2's per-group keys (SOLVER.WEIGHT_DECAY_NORM, WEIGHT_DECAY_BIAS,
BIAS_LR_FACTOR) are not read: mmcv's rules replace them, as ``paramwise_cfg`` does in mmseg.
"""
import math
from typing import Dict, List, Optional

from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.layers.batch_norm import LayerNorm as D2LayerNorm
from detectron2.solver.build import reduce_param_groups

from .config import register_config_keys

__all__ = ["paramwise_groups", "mmseg_param_names", "LR_DECAY_TYPES"]

# "layer_wise_vit" is mmseg's own spelling; "layer_decay" = LayerDecayOptimizerConstructor, which
# sets decay_type "layer_wise_vit"; the backbone's class then picks the layer ids, as in mmseg
LR_DECAY_TYPES = ("", "stage_wise", "layer_wise", "layer_wise_vit", "layer_decay")
_MULTS = ("BIAS_LR_MULT", "BIAS_DECAY_MULT", "NORM_DECAY_MULT", "DWCONV_DECAY_MULT")
# mmcv's is_norm (_BatchNorm, _InstanceNorm, GroupNorm, LayerNorm) + Detectron2's channels-first LN
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
          nn.LayerNorm, D2LayerNorm)
_TOKENS = ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed")


@register_config_keys
def add_paramwise_keys(keys):
    keys.SOLVER.PARAMWISE = CN()
    # mmcv paramwise_cfg.custom_keys as [substring, lr_mult, decay_mult] triples: the longest
    # substring of a parameter's name (ties: alphabetical) sets its lr and weight decay, and
    # the multipliers below are then not applied to it
    keys.SOLVER.PARAMWISE.CUSTOM_KEYS = []
    # None = not given (mmcv's 1.0); any of these or CUSTOM_KEYS switches to mmcv's groups
    keys.SOLVER.PARAMWISE.BIAS_LR_MULT = None  # biases outside norms
    keys.SOLVER.PARAMWISE.BIAS_DECAY_MULT = None  # biases outside norms and depthwise convs
    keys.SOLVER.PARAMWISE.NORM_DECAY_MULT = None  # BN/GN/LN/IN weights and biases
    keys.SOLVER.PARAMWISE.DWCONV_DECAY_MULT = None  # convs with groups == in_channels
    keys.SOLVER.LR_DECAY = CN()
    keys.SOLVER.LR_DECAY.TYPE = ""  # one of LR_DECAY_TYPES; "" = no layer-wise decay
    keys.SOLVER.LR_DECAY.NUM_LAYERS = 0  # mmseg's paramwise_cfg num_layers
    keys.SOLVER.LR_DECAY.RATE = 1.0  # decay_rate (layer_decay_rate): lr * RATE ** depth


def mmseg_param_names(model: nn.Module) -> Dict[nn.Parameter, str]:
    """Each trainable parameter (once) -> its name as mmseg would spell it (module docstring)."""
    cascade = hasattr(model, "cascade_head")
    names = {}
    for mod_name, module in model.named_modules():
        parts = mod_name.split(".") if mod_name else []
        if cascade and parts and parts[0] in ("cascade_head", "decode_head"):
            parts[:1] = ["decode_head", "0" if parts[0] == "cascade_head" else "1"]
        if parts and parts[-1] == "norm":
            # the inverse of checkpoint/mmseg.py's ".(bn|gn)." -> ".norm."
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                parts[-1] = "bn"
            elif isinstance(module, nn.GroupNorm):
                parts[-1] = "gn"
        for p_name, p in module.named_parameters(recurse=False):
            if p.requires_grad and p not in names:
                names[p] = ".".join(parts + [p_name])
    return names


def _number(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{key}={value!r}: expected a number >= 0")
    return float(value)


def _custom_keys(cfg) -> List[tuple]:
    """CUSTOM_KEYS in mmcv's order: longest first, ties alphabetical."""
    out = {}
    for i, entry in enumerate(cfg.SOLVER.PARAMWISE.CUSTOM_KEYS):
        key = f"SOLVER.PARAMWISE.CUSTOM_KEYS[{i}]"
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3
                and isinstance(entry[0], str) and entry[0]):
            raise ValueError(f"{key}={entry!r}: expected [substring, lr_mult, decay_mult], "
                             "e.g. ['head', 10.0, 1.0]")
        if entry[0] in out:
            raise ValueError(f"{key}: substring {entry[0]!r} is given twice")
        out[entry[0]] = (_number(f"{key} lr_mult", entry[1]),
                         _number(f"{key} decay_mult", entry[2]))
    return [(k, *out[k]) for k in sorted(sorted(out), key=len, reverse=True)]


def _default_constructor_groups(cfg, model) -> List[dict]:
    """mmcv's DefaultOptimizerConstructor.add_params, one group per parameter."""
    pw = cfg.SOLVER.PARAMWISE
    keys = _custom_keys(cfg)
    mult = {k: 1.0 if pw[k] is None else _number(f"SOLVER.PARAMWISE.{k}", pw[k]) for k in _MULTS}
    base_lr, base_wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
    names = mmseg_param_names(model)
    groups = []
    for module in model.modules():
        is_norm = isinstance(module, _NORMS)
        is_dwconv = isinstance(module, nn.Conv2d) and module.in_channels == module.groups
        for p_name, p in module.named_parameters(recurse=False):
            if names.get(p) is None:  # frozen, or shared with a module seen before
                continue
            name, lr, wd = names.pop(p), base_lr, base_wd
            hit = next((k for k in keys if k[0] in name), None)
            if hit is not None:  # a custom key overrides every other rule
                lr, wd = base_lr * hit[1], base_wd * hit[2]
            else:
                if p_name == "bias" and not is_norm:
                    lr = base_lr * mult["BIAS_LR_MULT"]
                if is_norm:
                    wd = base_wd * mult["NORM_DECAY_MULT"]
                elif is_dwconv:
                    wd = base_wd * mult["DWCONV_DECAY_MULT"]
                elif p_name == "bias":
                    wd = base_wd * mult["BIAS_DECAY_MULT"]
            groups.append({"params": [p], "lr": lr, "weight_decay": wd})
    return groups


def _layer_id_convnext(name: str, num_layers: int) -> int:
    if name in _TOKENS:
        return 0
    if name.startswith("backbone.downsample_layers"):
        return (0, 2, 3, num_layers)[int(name.split(".")[2])]
    if name.startswith("backbone.stages"):
        stage, block = int(name.split(".")[2]), int(name.split(".")[3])
        return (1, 2, 3 + block // 3, num_layers)[stage]
    return num_layers + 1


def _stage_id_convnext(name: str, num_groups: int) -> int:
    if name in _TOKENS or name.startswith("backbone.downsample_layers"):
        return 0
    if name.startswith("backbone.stages"):
        return int(name.split(".")[2]) + 1
    return num_groups - 1


def _layer_id_vit(name: str, num_groups: int) -> int:
    if name in _TOKENS or name.startswith("backbone.patch_embed"):
        return 0
    if name.startswith("backbone.layers"):
        return int(name.split(".")[2]) + 1
    return num_groups - 1


def _lr_decay_groups(cfg, model) -> List[dict]:
    """mmseg's LearningRateDecayOptimizerConstructor.add_params."""
    ld = cfg.SOLVER.LR_DECAY
    if isinstance(ld.NUM_LAYERS, bool) or not isinstance(ld.NUM_LAYERS, int) or ld.NUM_LAYERS < 1:
        raise ValueError(f"SOLVER.LR_DECAY.NUM_LAYERS={ld.NUM_LAYERS!r}: SOLVER.LR_DECAY.TYPE="
                         f"{ld.TYPE!r} needs the backbone's number of layers (an int >= 1)")
    rate = _number("SOLVER.LR_DECAY.RATE", ld.RATE)
    backbone = type(getattr(model, "backbone", None)).__name__
    stage_wise = ld.TYPE == "stage_wise"
    if "ConvNeXt" in backbone:
        layer_id = _stage_id_convnext if stage_wise else (
            lambda n, _: _layer_id_convnext(n, ld.NUM_LAYERS))  # mmseg passes num_layers here
    elif ("BEiT" in backbone or "MAE" in backbone) and not stage_wise:
        layer_id = _layer_id_vit
    else:
        raise ValueError(f"SOLVER.LR_DECAY.TYPE={ld.TYPE!r} is not defined for the backbone "
                         f"{backbone} (mmseg: ConvNeXt for 'stage_wise'; ConvNeXt, BEiT or MAE "
                         "for the layer-wise types)")
    num_groups = ld.NUM_LAYERS + 2
    base_lr, base_wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
    groups = []
    for p, name in mmseg_param_names(model).items():
        # mmseg also lists bare 'pos_embed'/'cls_token', which its prefixed names never equal
        no_decay = p.ndim == 1 or name.endswith(".bias")
        scale = rate ** (num_groups - layer_id(name, num_groups) - 1)
        groups.append({"params": [p], "lr": base_lr * scale,
                       "weight_decay": 0.0 if no_decay else base_wd})
    return groups


def paramwise_groups(cfg, model: nn.Module) -> Optional[List[dict]]:
    """The parameter groups of SOLVER.PARAMWISE / SOLVER.LR_DECAY (each group sets its own
    ``lr`` and ``weight_decay``; groups with the same settings merged), or None when neither
    is used and Detectron2's groups apply."""
    pw, ld = cfg.SOLVER.PARAMWISE, cfg.SOLVER.LR_DECAY
    if ld.TYPE not in LR_DECAY_TYPES:
        raise ValueError(f"SOLVER.LR_DECAY.TYPE={ld.TYPE!r}: one of {LR_DECAY_TYPES}")
    paramwise = bool(pw.CUSTOM_KEYS) or any(pw[k] is not None for k in _MULTS)
    if ld.TYPE and paramwise:
        raise ValueError(f"SOLVER.LR_DECAY.TYPE={ld.TYPE!r} ignores SOLVER.PARAMWISE (mmseg's "
                         "LearningRateDecayOptimizerConstructor applies no custom_keys or "
                         "multipliers): leave SOLVER.PARAMWISE at its defaults")
    if ld.TYPE:
        groups = _lr_decay_groups(cfg, model)
    elif paramwise:
        groups = _default_constructor_groups(cfg, model)
    else:
        return None
    return reduce_param_groups(groups)
