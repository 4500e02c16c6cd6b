"""ImageNet backbone checkpoints -> d2seg ``backbone.*`` keys (heads keep their initialisation).

Recognised from their keys in ``.pth`` files (Detectron2/caffe ``.pkl`` files go through
Detectron2's own name matching in SegCheckpointer); the ImageNet classifier is dropped:

- open-mmlab ResNetV1c (``resnet50_v1c``, ``resnet101_v1c``; deep stem, ``STEM_TYPE: deeplab``):
  ``stem.{0,1,3,4,6,7}.*``, ``layer{1-4}.*``; drops ``fc.*``.
- torchvision ResNet (also mmseg's ResNetV1b; 7x7 stem, stride in the 3x3: ``STEM_TYPE: basic``,
  ``STRIDE_IN_1X1: False``): ``conv1.weight``, ``bn1.*``, ``layer{1-4}.*``; drops ``fc.*``.
- HRNetV2 ImageNet (MSRA's HRNet-Image-Classification files, as mmseg loads them):
  ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1``, ``transition{1,2,3}``, ``stage{2,3,4}``
  (names kept); drops ``incre_modules``, ``downsamp_modules``, ``final_layer``, ``classifier``.
- Detectron2 ResNet: ``stem.conv1.*``, ``res{2-5}.*``.
- SegFormer MiT, official (NVlabs ``mit_b0.pth``..``mit_b5.pth``): ``patch_embed{1-4}.*``,
  ``block{1-4}.*``, ``norm{1-4}.*``, converted as mmseg's tools/model_converters/mit2mmseg.py
  (q and kv Linears -> one ``in_proj``, Mix-FFN Linears -> 1x1 convs); drops ``head.*``.
- SegFormer MiT, mmseg's conversion (``mit_b0_20220624-7e0fe6dd.pth``...): ``layers.{0-3}.*``
  (names kept).
- mmcls / mmpretrain: ``backbone.`` + one of the above; drops ``head.*``.
"""
import re
from typing import Dict, List, Optional, Tuple

import torch

from .mmseg import convert_mmseg_key

__all__ = [
    "detect_backbone_format", "convert_backbone_state_dict", "convert_mit_official",
    "CLASSIFIER_KEYS",
]

# ImageNet classifier parts of the source models, which d2seg does not have
CLASSIFIER_KEYS = re.compile(
    r"^(fc|fc1000|head|classifier|incre_modules|downsamp_modules|final_layer)\."
)
FORMAT_NAMES = {
    "resnet_v1c": "open-mmlab ResNetV1c",
    "resnet": "torchvision ResNet",
    "hrnet": "HRNetV2 ImageNet",
    "detectron2_resnet": "Detectron2 ResNet",
    "mit_official": "SegFormer MiT (NVlabs)",
    "mit": "SegFormer MiT (mmseg)",
}
_HEADS = ("decode_head.", "auxiliary_head.", "auxiliary_heads.", "cascade_head.")


def detect_backbone_format(sd: Dict[str, torch.Tensor]) -> Optional[str]:
    """``resnet_v1c``, ``resnet``, ``hrnet``, ``detectron2_resnet``, ``mit_official``, ``mit``,
    ``mmcls:<format>`` or None
    (not a bare ImageNet backbone: a segmentor, or unknown)."""
    if any(k.startswith(_HEADS) for k in sd):
        return None
    if any(k.startswith("backbone.") for k in sd):
        if not all(k.startswith(("backbone.", "head.", "neck.")) for k in sd):
            return None
        inner = detect_backbone_format(
            {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        )
        return f"mmcls:{inner}" if inner else None
    has = lambda prefix: any(k.startswith(prefix) for k in sd)  # noqa: E731
    if has("transition1.") or has("stage2."):
        return "hrnet"
    if has("patch_embed1.") and has("block1."):
        return "mit_official"
    if "layers.0.0.projection.weight" in sd:
        return "mit"
    if "stem.0.weight" in sd and has("layer1."):
        return "resnet_v1c"
    if "conv1.weight" in sd and has("layer1."):
        return "resnet"
    if has("stem.conv1.") and has("res2."):
        return "detectron2_resnet"
    return None


def convert_backbone_state_dict(
    sd: Dict[str, torch.Tensor], fmt: Optional[str] = None
) -> Tuple[Dict[str, torch.Tensor], List[str], str]:
    """``(d2seg state_dict under backbone., skipped source keys, format name)``."""
    fmt = fmt or detect_backbone_format(sd)
    if fmt is None:
        raise ValueError(f"not a known backbone checkpoint layout (first keys: {sorted(sd)[:5]})")
    skipped = [k for k in sd if CLASSIFIER_KEYS.match(k)]
    if fmt.startswith("mmcls:"):
        inner = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        out, inner_skipped, name = convert_backbone_state_dict(inner, fmt[len("mmcls:"):])
        skipped = sorted(set(skipped) | {f"backbone.{k}" for k in inner_skipped})
        return out, skipped, f"mmcls/{name}"
    if fmt == "mit_official":
        sd = convert_mit_official(sd)
    out = {}
    for k, v in sd.items():
        if CLASSIFIER_KEYS.match(k):
            continue
        key = "backbone." + k
        if fmt in ("resnet_v1c", "resnet"):
            key = convert_mmseg_key(key, is_resnet=True)
        out[key] = v
    return out, sorted(skipped), FORMAT_NAMES[fmt]


def convert_mit_official(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """NVlabs SegFormer MiT keys -> mmseg's ``MixVisionTransformer`` keys, as mmseg's
    mit2mmseg.py; the classifier (``head.*``) passes through to be dropped by the caller."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(patch_embed|block|norm)(\d)\.(.*)$", k)
        if m is None:
            out[k] = v
            continue
        kind, stage, rest = m[1], int(m[2]) - 1, m[3]
        if kind == "patch_embed":  # proj -> projection
            out[f"layers.{stage}.0.{re.sub(r'^proj[.]', 'projection.', rest)}"] = v
        elif kind == "norm":  # the stage's final LayerNorm
            out[f"layers.{stage}.2.{rest}"] = v
        else:
            j, rest = rest.split(".", 1)
            prefix = f"layers.{stage}.1.{j}."
            attn = re.match(r"^attn\.(q|kv|proj)\.(weight|bias)$", rest)
            mlp = re.match(r"^mlp\.(fc1|dwconv\.dwconv|fc2)\.(weight|bias)$", rest)
            if attn and attn[1] == "q":  # nn.MultiheadAttention's packed [q; k; v] projection
                kv = k.replace(".attn.q.", ".attn.kv.")
                if kv not in sd:
                    raise ValueError(f"MiT checkpoint: {k} has no matching {kv}")
                out[prefix + f"attn.attn.in_proj_{attn[2]}"] = torch.cat([v, sd[kv]], dim=0)
            elif attn and attn[1] == "proj":
                out[prefix + f"attn.attn.out_proj.{attn[2]}"] = v
            elif attn:  # kv: packed with q above
                continue
            elif mlp:  # Linear fc1/fc2 -> 1x1 convs 0/4, the depthwise conv -> 1
                index = {"fc1": 0, "dwconv.dwconv": 1, "fc2": 4}[mlp[1]]
                if mlp[1] != "dwconv.dwconv" and mlp[2] == "weight":
                    v = v.reshape(*v.shape, 1, 1)
                out[prefix + f"ffn.layers.{index}.{mlp[2]}"] = v
            else:  # norm1, norm2, attn.sr, attn.norm: same names
                out[prefix + rest] = v
    return out
