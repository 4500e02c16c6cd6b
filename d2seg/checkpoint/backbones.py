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
- STDC1 / STDC2, official (STDC-Seg's ``STDCNet813M_73.91.tar``, ``STDCNet1446M_76.47.tar``):
  ``features.{i}.conv_list.*``, ``features.{i}.avd_layer.*``, converted as mmseg's
  tools/model_converters/stdc2mmseg.py to ``STDCNet`` keys; drops ``conv_last``, ``fc``, ``bn``,
  ``linear`` and the duplicate views ``x2``..``x32``.
- STDC1 / STDC2, mmseg's conversion (``stdc1_20220308-5368626c.pth``...): ``stages.*`` (names
  kept; other keys dropped). Both load into the ``STDCNet`` inside d2seg's STDC backbone
  (``backbone.backbone.``): the context path keeps its initialisation, as in mmseg.
- Swin, official (Microsoft's ``swin_tiny_patch4_window7_224.pth``...): ``patch_embed.proj.*``,
  ``layers.{0-3}.*``, converted as mmseg's tools/model_converters/swin2mmseg.py (``stages``,
  ``attn.w_msa``, ``ffn.layers``, PatchMerging ``reduction``/``norm`` reordered to ``nn.Unfold``'s
  channel order); drops ``head.*``, the ImageNet model's final ``norm.*`` and the shifted blocks'
  ``attn_mask`` buffers (d2seg, as mmseg, builds the mask for each input).
- Swin, mmseg's conversion (``swin_tiny_patch4_window7_224_20220317-1cdeb081.pth``...):
  ``patch_embed.projection.*``, ``stages.{0-3}.*`` (names kept; drops the same ``norm.*`` and
  ``attn_mask`` as above when present).
- mmcls / mmpretrain: ``backbone.`` + one of the above; drops ``head.*``.
"""
import re
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Pattern, Tuple, Union

import torch

from .mmseg import convert_mmseg_key

__all__ = [
    "detect_backbone_format", "convert_backbone_state_dict", "convert_mit_official",
    "convert_swin_official",
    "CLASSIFIER_KEYS", "backbone_weights_prefix", "convert_stdc_official",
    "WeightFormat", "register_weight_format",
]

# ImageNet classifier parts of the source models, which d2seg does not have
CLASSIFIER_KEYS = re.compile(
    r"^(fc|fc1000|head|classifier|incre_modules|downsamp_modules|final_layer)\."
)


@dataclass(frozen=True)
class WeightFormat:
    """One ImageNet backbone layout: how to recognise a state_dict of it and turn it into d2seg's
    ``backbone.*`` keys. A model family registers its own with :func:`register_weight_format`,
    in its module."""

    name: str  # short id, e.g. "swin_official" (reported, and accepted as ``fmt``)
    title: str  # what the log says, e.g. "Swin Transformer (Microsoft)"
    detect: Callable[[Dict[str, torch.Tensor]], bool]
    # source layout -> mmseg's backbone layout (names under the backbone module); None = same
    convert: Optional[Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]] = None
    # source keys the segmentation backbone has no use for (beyond CLASSIFIER_KEYS): skipped
    unused: Optional[Pattern] = None
    # after ``convert``: keys kept (None = all but classifier/unused); the others are skipped
    kept: Optional[Pattern] = None
    # where the kept keys go in the model: "backbone." + key, or e.g. "backbone.backbone." for
    # weights of a network nested in d2seg's backbone module (STDC's context path)
    model_prefix: str = "backbone."
    # model keys these weights fill (reported: the rest of the backbone keeps its init, as in
    # mmseg): a prefix or a tuple of prefixes; None = model_prefix
    fills: Optional[Union[str, Tuple[str, ...]]] = None
    # the torchvision/open-mmlab ResNet key renaming of d2seg.checkpoint.mmseg
    is_resnet: bool = False
    # a model key prefix: the layout is only for models with such keys, and then tried first
    # (the same file filling a network nested in a family's backbone: ICNet's ResNet)
    model_has: Optional[str] = None


# registered formats, tried in order by detect_backbone_format; the generic ResNet layouts
# (_FALLBACK) are tried after every family's own
_FORMATS: Dict[str, WeightFormat] = {}
_FALLBACK = ("resnet_v1c", "resnet", "detectron2_resnet")


def register_weight_format(fmt: WeightFormat) -> WeightFormat:
    """Adds (or replaces) a backbone weight layout; see :class:`WeightFormat`."""
    _FORMATS[fmt.name] = fmt
    return fmt


def _has(sd, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)


# stdc2mmseg.py's official ``features.{i}`` -> mmseg ``stages.{...}``, by STDC1's / STDC2's
# number of feature modules
_STDC_STAGES = {
    8: ["0", "1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1"],
    14: ["0", "1", "2.0", "2.1", "2.2", "2.3", "3.0", "3.1", "3.2", "3.3", "3.4", "4.0", "4.1",
         "4.2"],
}
# parts of Swin's ImageNet model that the segmentation backbone does not have (both layouts)
SWIN_UNUSED = re.compile(r"^(norm\.(weight|bias)$|(layers|stages)\.\d+\.blocks\.\d+\.attn_mask$)")
# (Swin's per-output norm0..3 are not in ImageNet weights and keep their LayerNorm 1/0 init)
_SWIN_FILLS = ("backbone.patch_embed.", "backbone.stages.")
_STDC_KEPT = re.compile(r"^(stages|final_conv)\.")
_HEADS = ("decode_head.", "auxiliary_head.", "auxiliary_heads.", "cascade_head.")


def detect_backbone_format(sd: Dict[str, torch.Tensor],
                           model_keys: Iterable[str] = ()) -> Optional[str]:
    """The name of the registered layout ``sd`` is in (``resnet_v1c``, ``mit_official``,
    ``swin``, ...), ``mmcls:<name>`` for one under ``backbone.``, or None (not a bare ImageNet
    backbone: a segmentor, or unknown). ``model_keys`` (the model's state_dict keys) select the
    layouts registered for one kind of model (``WeightFormat.model_has``)."""
    if any(k.startswith(_HEADS) for k in sd):
        return None
    if any(k.startswith("backbone.") for k in sd):
        if not all(k.startswith(("backbone.", "head.", "neck.")) for k in sd):
            return None
        inner = detect_backbone_format(
            {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")},
            model_keys,
        )
        return f"mmcls:{inner}" if inner else None
    model_keys = list(model_keys)
    for_model = [n for n, f in _FORMATS.items()
                 if f.model_has and any(k.startswith(f.model_has) for k in model_keys)]
    order = for_model + [n for n, f in _FORMATS.items() if n not in _FALLBACK and not f.model_has]
    order += [n for n in _FALLBACK if n in _FORMATS]
    for name in order:
        if _FORMATS[name].detect(sd):
            return name
    return None


def convert_backbone_state_dict(
    sd: Dict[str, torch.Tensor], fmt: Optional[str] = None
) -> Tuple[Dict[str, torch.Tensor], List[str], str]:
    """``(d2seg state_dict under backbone., skipped source keys, format title)``."""
    fmt = fmt or detect_backbone_format(sd)
    if fmt is None:
        raise ValueError(f"not a known backbone checkpoint layout (first keys: {sorted(sd)[:5]})")
    skipped = [k for k in sd if CLASSIFIER_KEYS.match(k)]
    if fmt.startswith("mmcls:"):
        inner = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        out, inner_skipped, name = convert_backbone_state_dict(inner, fmt[len("mmcls:"):])
        skipped = sorted(set(skipped) | {f"backbone.{k}" for k in inner_skipped})
        return out, skipped, f"mmcls/{name}"
    spec = _FORMATS[fmt]
    if spec.unused is not None:
        skipped += [k for k in sd if spec.unused.match(k)]
        sd = {k: v for k, v in sd.items() if not spec.unused.match(k)}
    if spec.convert is not None:
        sd = spec.convert(sd)
    if spec.kept is not None:
        skipped = sorted(set(skipped) | {k for k in sd if not spec.kept.match(k)})
        sd = {k: v for k, v in sd.items() if spec.kept.match(k)}
    out = {}
    for k, v in sd.items():
        if CLASSIFIER_KEYS.match(k):
            continue
        key = spec.model_prefix + k
        if spec.is_resnet or spec.model_prefix != "backbone.":
            key = convert_mmseg_key(key, is_resnet=spec.is_resnet)
        out[key] = v
    return out, sorted(set(skipped)), spec.title


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


def backbone_weights_prefix(fmt: Optional[str]) -> Union[str, Tuple[str, ...]]:
    """The model keys that weights of backbone format ``fmt`` fill: ``backbone.``, or prefixes
    of a part of it (STDC's ImageNet weights are those of the STDCNet inside the context path
    network; Swin's lack the per-output norms)."""
    spec = _FORMATS.get((fmt or "").split(":")[-1])
    if spec is None:
        return "backbone."
    return spec.fills or spec.model_prefix


def convert_stdc_official(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official STDC-Seg ImageNet keys -> mmseg's ``STDCNet`` keys, as mmseg's stdc2mmseg.py
    (``features.{i}`` -> ``stages.{stage}``, ``conv_list`` -> ``layers``, ``avd_layer.{0,1}`` ->
    ``downsample.{conv,bn}``); keys outside ``features.`` pass through for the caller to drop."""
    sd = {k.replace("cp.", "", 1) if k.startswith("cp.") else k: v for k, v in sd.items()}
    indices = {int(k.split(".")[1]) for k in sd if re.match(r"^features\.\d+\.", k)}
    stages = _STDC_STAGES.get(len(indices))
    if stages is None or indices != set(range(len(indices))):
        raise ValueError(f"STDC checkpoint: features.{{i}} with {len(indices)} modules "
                         f"(indices {sorted(indices)}), expected STDC1's 8 or STDC2's 14")
    out = {}
    for k, v in sd.items():
        m = re.match(r"^features\.(\d+)\.(.*)$", k)
        if m is None:
            out[k] = v
            continue
        rest = m[2].replace("conv_list", "layers")
        rest = re.sub(r"^avd_layer\.0\.", "downsample.conv.", rest)
        rest = re.sub(r"^avd_layer\.1\.", "downsample.bn.", rest)
        out[f"stages.{stages[int(m[1])]}.{rest}"] = v
    return out


def _unfold_order(v: torch.Tensor) -> torch.Tensor:
    """PatchMerging's 4C axis (the last of ``reduction.weight`` and ``norm.*``) from the
    official [x0, x1, x2, x3] = neighbours (0,0), (1,0), (0,1), (1,1) concatenated, to
    ``nn.Unfold``'s (C, kh, kw) order, as swin2mmseg's correct_unfold_*_order."""
    x = v.reshape(*v.shape[:-1], 4, v.shape[-1] // 4)[..., [0, 2, 1, 3], :]
    return x.transpose(-1, -2).reshape(v.shape)


def convert_swin_official(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Microsoft's Swin Transformer keys -> mmseg's ``SwinTransformer`` keys, as mmseg's
    swin2mmseg.py; other keys (``head.*``, ``norm.*``) pass through for the caller to drop."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"^layers\.(\d+)\.(.*)$", k)
        if m is None:
            out[re.sub(r"^patch_embed\.proj\.", "patch_embed.projection.", k)] = v
            continue
        rest = m[2]
        if ".attn." in rest:
            rest = rest.replace(".attn.", ".attn.w_msa.")
        elif ".mlp.fc1." in rest:
            rest = rest.replace(".mlp.fc1.", ".ffn.layers.0.0.")
        elif ".mlp.fc2." in rest:
            rest = rest.replace(".mlp.fc2.", ".ffn.layers.1.")
        elif re.match(r"^downsample\.(reduction\.weight|norm\.(weight|bias))$", rest):
            v = _unfold_order(v)
        out[f"stages.{m[1]}.{rest}"] = v
    return out


# the layouts of the classic backbones and of the families added before the registry existed,
# in the order they are told apart (a family module registers its own next to its code)
for _fmt in (
    WeightFormat("hrnet", "HRNetV2 ImageNet",
                 lambda sd: _has(sd, "transition1.") or _has(sd, "stage2.")),
    WeightFormat("mit_official", "SegFormer MiT (NVlabs)",
                 lambda sd: _has(sd, "patch_embed1.") and _has(sd, "block1."),
                 convert=convert_mit_official),
    WeightFormat("mit", "SegFormer MiT (mmseg)", lambda sd: "layers.0.0.projection.weight" in sd),
    WeightFormat("stdc_official", "STDC (official)",
                 lambda sd: _has(sd, "features.") and any(".conv_list." in k for k in sd),
                 convert=convert_stdc_official, kept=_STDC_KEPT,
                 model_prefix="backbone.backbone."),
    WeightFormat("stdc", "STDC (mmseg)",
                 lambda sd: "stages.0.conv.weight" in sd and _has(sd, "stages.2.0.layers."),
                 kept=_STDC_KEPT, model_prefix="backbone.backbone."),
    WeightFormat("swin_official", "Swin Transformer (Microsoft)",
                 lambda sd: "patch_embed.proj.weight" in sd and _has(sd, "layers.0.blocks."),
                 convert=convert_swin_official, unused=SWIN_UNUSED, fills=_SWIN_FILLS),
    WeightFormat("swin", "Swin Transformer (mmseg)",
                 lambda sd: "patch_embed.projection.weight" in sd and _has(sd, "stages.0.blocks."),
                 unused=SWIN_UNUSED, fills=_SWIN_FILLS),
    WeightFormat("resnet_v1c", "open-mmlab ResNetV1c",
                 lambda sd: "stem.0.weight" in sd and _has(sd, "layer1."), is_resnet=True),
    WeightFormat("resnet", "torchvision ResNet",
                 lambda sd: "conv1.weight" in sd and _has(sd, "layer1."), is_resnet=True),
    WeightFormat("detectron2_resnet", "Detectron2 ResNet",
                 lambda sd: _has(sd, "stem.conv1.") and _has(sd, "res2.")),
):
    register_weight_format(_fmt)
