"""The table of model families: mmseg backbone type -> the module that translates it.

A family is a one-place addition: a module here that calls :func:`register_family` with its
backbone types, the d2seg base yaml of each decode-head type (``configs/_base_/models/``) and the
function that translates ``model.backbone`` (it sets the backbone's d2seg keys and returns
``{feature: channels}`` in mmseg's output order, which ``in_index`` counts in), plus its name
in ``FAMILY_MODULES``. Head types a family brings declare their arguments with ``heads``.
"""
import importlib
from collections import OrderedDict

from .common import TranslationError

# mmseg config folder -> method title (the 13 classic methods, then the real-time families)
METHODS = OrderedDict([
    ("fcn", "FCN"),
    ("pspnet", "PSPNet"),
    ("psanet", "PSANet"),
    ("deeplabv3", "DeepLabV3"),
    ("deeplabv3plus", "DeepLabV3+"),
    ("upernet", "UPerNet"),
    ("hrnet", "HRNet"),
    ("gcnet", "GCNet"),
    ("nonlocal_net", "NonLocal Net"),
    ("ccnet", "CCNet"),
    ("danet", "DANet"),
    ("ann", "ANN"),
    ("ocrnet", "OCRNet"),
])
REALTIME = OrderedDict([
    ("bisenetv1", "BiSeNetV1"),
    ("bisenetv2", "BiSeNetV2"),
    ("stdc", "STDC"),
    ("fastscnn", "Fast-SCNN"),
    ("icnet", "ICNet"),
    ("cgnet", "CGNet"),
    ("erfnet", "ERFNet"),
    ("mobilenet_v2", "MobileNetV2"),
    ("mobilenet_v3", "MobileNetV3"),
])
MODERN = OrderedDict([  # the transformer generation (issue 21)
    ("segformer", "SegFormer"),
    ("swin", "Swin Transformer"),
    ("convnext", "ConvNeXt"),
    ("twins", "Twins"),
    ("poolformer", "PoolFormer"),
    ("vit", "Vision Transformer"),
    ("beit", "BEiT"),
    ("mae", "MAE"),
    ("segmenter", "Segmenter"),
    ("setr", "SETR"),
    ("dpt", "DPT"),
    ("knet", "K-Net"),
])
METHODS_CLASSIC = list(METHODS)  # the 390 configs of the 13 methods
METHODS.update(REALTIME)
METHODS.update(MODERN)
# mmseg configs that d2seg cannot express yet: stem -> why (the generator reports them; the
# test checks that each still fails, with this reason, so the list cannot go stale)
BLOCKED = {}  # stem -> (what the translation stops at, why d2seg cannot run it)

# Decode-head arguments shared by heads: mmseg name -> d2seg key in the head's node
HEAD_ARGS = {
    "channels": "CONVS_DIM",
    "dropout_ratio": "DROPOUT",
    "align_corners": "ALIGN_CORNERS",
    # FCNHead and its subclasses (GC/NL/CC)
    "num_convs": "NUM_CONVS",
    "kernel_size": "KERNEL_SIZE",
    "concat_input": "CONCAT_INPUT",
    "dilation": "DILATION",
}
METHOD_ARGS = {  # per head type: mmseg argument -> absolute d2seg key (families add theirs)
    "PSPHead": {"pool_scales": "MODEL.PSP_HEAD.POOL_SCALES"},
    "UPerHead": {"pool_scales": "MODEL.UPER_HEAD.POOL_SCALES"},
    "ASPPHead": {"dilations": "MODEL.ASPP_HEAD.DILATIONS"},
    "DepthwiseSeparableASPPHead": {"dilations": "MODEL.ASPP_HEAD.DILATIONS",
                                   "c1_channels": "MODEL.ASPP_HEAD.C1_CHANNELS"},
    "PSAHead": {"mask_size": "MODEL.PSA_HEAD.MASK_SIZE", "psa_type": "MODEL.PSA_HEAD.PSA_TYPE",
                "compact": "MODEL.PSA_HEAD.COMPACT",
                "shrink_factor": "MODEL.PSA_HEAD.SHRINK_FACTOR",
                "normalization_factor": "MODEL.PSA_HEAD.NORMALIZATION_FACTOR",
                "psa_softmax": "MODEL.PSA_HEAD.PSA_SOFTMAX"},
    "GCHead": {"ratio": "MODEL.GC_HEAD.RATIO", "pooling_type": "MODEL.GC_HEAD.POOLING_TYPE",
               "fusion_types": "MODEL.GC_HEAD.FUSION_TYPES"},
    "NLHead": {"reduction": "MODEL.NL_HEAD.REDUCTION", "use_scale": "MODEL.NL_HEAD.USE_SCALE",
               "mode": "MODEL.NL_HEAD.MODE"},
    "CCHead": {"recurrence": "MODEL.CC_HEAD.RECURRENCE"},
    "DAHead": {"pam_channels": "MODEL.DA_HEAD.PAM_CHANNELS"},
    "ANNHead": {"project_channels": "MODEL.ANN_HEAD.PROJECT_CHANNELS",
                "query_scales": "MODEL.ANN_HEAD.QUERY_SCALES",
                "key_pool_scales": "MODEL.ANN_HEAD.KEY_POOL_SCALES"},
    "OCRHead": {"ocr_channels": "MODEL.OCR_HEAD.OCR_CHANNELS", "scale": "MODEL.OCR_HEAD.SCALE"},
    "FCNHead": {},
}
# Arguments that some heads pass to BaseDecodeHead themselves (not visible in any signature)
HEAD_HOOKS = {}  # head type -> fn(translation, args, node): reads what only that head has
FAMILIES = {}  # mmseg backbone type -> Family
FAMILY_MODULES = ["resnet", "hrnet", "bisenetv1", "bisenetv2", "stdc", "fast_scnn", "icnet",
                  "cgnet", "erfnet", "mobilenet", "segformer", "swin", "convnext",
                  "twins", "poolformer", "vit",
                  # methods that bring heads to the families above (extend_family)
                  "segmenter", "setr", "dpt", "knet"]


class Family:
    """``base_models``: decode-head type -> d2seg base yaml name, or fn(translation, [head
    Node]) -> name where one head type has several bases (SETR's naive / PUP SETRUPHead)."""

    def __init__(self, name, base_models, translate, parent=None):
        self.name, self.base_models, self.translate = name, base_models, translate
        # fn(translation, mmseg parent kind, name) -> (kind, name): a family whose mmseg leaves
        # inherit another family's leaf (MobileNetV2 on ResNet-101 leaves) names its own base
        self.parent = parent


def register_family(name, types, base_models, heads=None, head_hooks=None, parent=None):
    def deco(fn):
        fam = Family(name, dict(base_models), fn, parent)
        for t in types:
            if t in FAMILIES:
                raise ValueError(f"backbone type {t} registered twice")
            FAMILIES[t] = fam
        _add_heads(heads, head_hooks)
        return fn
    return deco


def _add_heads(heads, head_hooks):
    for h, args in (heads or {}).items():
        METHOD_ARGS.setdefault(h, {}).update(args)
    HEAD_HOOKS.update(head_hooks or {})


def extend_family(btype, base_models, heads=None, head_hooks=None):
    """A method that puts its heads on a registered family's backbone (Segmenter, SETR, DPT on
    VisionTransformer; K-Net on ResNet and Swin): its base yamls and head arguments."""
    fam = FAMILIES[btype]
    for h in base_models:
        if h in fam.base_models:
            raise ValueError(f"{btype} + {h}: base model registered twice")
    fam.base_models.update(base_models)
    _add_heads(heads, head_hooks)


def _load():
    if not FAMILIES:
        for m in FAMILY_MODULES:
            importlib.import_module(f"{__package__}.{m}")


def family_of(btype):
    _load()
    if btype not in FAMILIES:
        raise TranslationError(f"model.backbone.type={btype!r}: no d2seg family translates it "
                               f"(known: {sorted(FAMILIES)})")
    return FAMILIES[btype]
