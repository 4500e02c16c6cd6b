"""MMSegmentation 0.x state_dict keys -> d2seg keys.

d2seg's heads mirror mmseg's module names and nesting; only three things differ:
- mmcv's ``ConvModule`` (``.conv`` + ``.bn``/``.gn``) is Detectron2's ``Conv2d`` with ``.norm``;
- the ResNet backbone uses Detectron2's names (``stem.convN``, ``resN``, ``shortcut``);
- the auxiliary head is ``auxiliary_heads.0`` (a list), an OCR cascade's stage 0 is
  ``cascade_head`` and its stage 1 the ``decode_head``.
"""
import re
from typing import Dict, List

import torch

__all__ = ["convert_mmseg_state_dict", "convert_mmseg_key", "register_nested_resnet"]

# the ResNet is the backbone, or nested in it as mmseg's backbone_cfg (ICNet: backbone.backbone.)
_R = r"^(backbone\.(?:backbone\.)?)"
_RESNET_RULES = [
    # ResNetV1c deep stem: stem.{0,3,6} convs, stem.{1,4,7} norms
    (_R + r"stem\.([036])\.", lambda m: f"{m[1]}stem.conv{int(m[2]) // 3 + 1}."),
    (_R + r"stem\.([147])\.", lambda m: f"{m[1]}stem.conv{int(m[2]) // 3 + 1}.norm."),
    # ResNetV1b / caffe 7x7 stem
    (_R + r"conv1\.", lambda m: f"{m[1]}stem.conv1."),
    (_R + r"bn1\.", lambda m: f"{m[1]}stem.conv1.norm."),
    (_R + r"layer(\d)\.", lambda m: f"{m[1]}res{int(m[2]) + 1}."),
]
_BLOCK_RULES = [
    (_R + r"(res\d\.\d+)\.bn(\d)\.", lambda m: f"{m[1]}{m[2]}.conv{m[3]}.norm."),
    (_R + r"(res\d\.\d+)\.downsample\.0\.", lambda m: f"{m[1]}{m[2]}.shortcut."),
    (_R + r"(res\d\.\d+)\.downsample\.1\.", lambda m: f"{m[1]}{m[2]}.shortcut.norm."),
]
_HEAD_RULES = [
    (r"^auxiliary_head\.(\d+)\.", lambda m: f"auxiliary_heads.{m[1]}."),
    (r"^auxiliary_head\.", lambda m: "auxiliary_heads.0."),
    (r"^decode_head\.0\.", lambda m: "cascade_head."),
    (r"^decode_head\.1\.", lambda m: "decode_head."),
]
# mmcv ConvModule -> Detectron2 Conv2d (anywhere but the ResNet, handled above)
_CONV_MODULE_RULES = [
    (r"\.conv\.(weight|bias)$", lambda m: f".{m[1]}"),
    (r"\.(bn|gn)\.", lambda m: ".norm."),
]


# ResNets inside another backbone module (BiSeNetV1's context path), registered by their family's
# module: mmseg's ResNet keys under these prefixes are converted as the top-level ResNet's
_NESTED_RESNETS: List[str] = []


def register_nested_resnet(prefix: str) -> None:
    """Converts mmseg ResNet keys under ``prefix`` (e.g. ``backbone.context_path.backbone.``)
    to d2seg's ResNet names, whatever the rest of the checkpoint is."""
    if prefix not in _NESTED_RESNETS:
        _NESTED_RESNETS.append(prefix)


def _apply(rules, key):
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def convert_mmseg_key(key: str, is_cascade: bool = False, is_resnet: bool = True) -> str:
    for prefix in _NESTED_RESNETS:
        if key.startswith(prefix):
            inner = _apply(_BLOCK_RULES, _apply(_RESNET_RULES, "backbone." + key[len(prefix):]))
            return prefix + inner[len("backbone."):]
    if key.startswith("backbone.") and is_resnet:
        # then the ConvModule rules, for the modules around a nested ResNet (no-ops on ResNet keys)
        return _apply(_CONV_MODULE_RULES, _apply(_BLOCK_RULES, _apply(_RESNET_RULES, key)))
    rules = _HEAD_RULES if is_cascade else _HEAD_RULES[:2]
    return _apply(_CONV_MODULE_RULES, _apply(rules, key))


def convert_mmseg_state_dict(
    state_dict: Dict[str, torch.Tensor], is_cascade: bool = False, is_resnet: bool = True
) -> Dict[str, torch.Tensor]:
    """Renames an mmseg segmentor's state_dict to d2seg's module names (tensors unchanged)."""
    return {
        convert_mmseg_key(k, is_cascade, is_resnet): v
        for k, v in state_dict.items()
    }
