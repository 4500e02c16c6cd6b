"""SETR (mmseg's setr/): ViT-L + SETRUPHead (naive, PUP) or MLANeck + SETRMLAHead."""
from .common import TranslationError
from .registry import extend_family

_UP_INIT = [dict(type="Constant", val=1.0, bias=0, layer="LayerNorm"),
            dict(type="Normal", std=0.01, override=dict(name="conv_seg"))]


def _up_scale(t, args, node, path):
    scale = args.pop("up_scale")
    if scale != int(scale):
        raise TranslationError(f"{path}.up_scale={scale}: d2seg takes whole factors")
    t.set(f"{node}.UP_SCALE", int(scale))


def _up_head(t, args, node, path):
    """SETRUPHead: LN (eps 1e-6) over the channels first; its LayerNorm init is the layer's."""
    norm = args.pop("norm_layer")
    if norm != dict(type="LN", eps=1e-6, requires_grad=True):
        raise TranslationError(f"{path}.norm_layer={norm!r}: d2seg has LN eps 1e-6")
    if args.pop("init_cfg") != _UP_INIT:
        raise TranslationError(f"{path}.init_cfg: d2seg has SETRUPHead's default")
    _up_scale(t, args, node, path)


def _mla_head(t, args, node, path):
    """SETRMLAHead passes input_transform='multiple_select' to BaseDecodeHead itself."""
    args["input_transform"] = "multiple_select"
    _up_scale(t, args, node, path)


def _base(t, heads):
    """naive: one k1 conv x4; PUP: four k3 convs x2 (mmseg's setr_naive.py / setr_pup.py)."""
    return "setr_pup" if heads[0].d.get("num_convs") == 4 else "setr_naive"


extend_family(
    "VisionTransformer", {"SETRUPHead": _base, "SETRMLAHead": "setr_mla"},
    heads={"SETRUPHead": {}, "SETRMLAHead": {"mla_channels": "MODEL.SETR_MLA_HEAD.MLA_CHANNELS"}},
    head_hooks={"SETRUPHead": _up_head, "SETRMLAHead": _mla_head})
