"""MobileNetV2 (mmseg's mobilenet_v2/: FCN, PSPNet, DeepLabV3(+) on a stride-8 MobileNetV2) and
MobileNetV3 (mobilenet_v3/: LR-ASPP)."""
from .common import TranslationError
from .registry import register_family


def _own_base(t, kind, name):
    """mmseg's MobileNetV2 leaves inherit the ResNet-101 leaf of their head and replace its
    backbone; d2seg's leaves inherit ``<head>_m-v2-d8.yaml`` (fcn_m-v2-d8 with that head)."""
    return "model", t.base_model


@register_family("MobileNetV2", ("MobileNetV2",), {
    "FCNHead": "fcn_m-v2-d8", "PSPHead": "pspnet_m-v2-d8", "ASPPHead": "deeplabv3_m-v2-d8",
    "DepthwiseSeparableASPPHead": "deeplabv3plus_m-v2-d8"}, parent=_own_base)
def translate_v2(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_mobilenet_v2_backbone")
    t.take_keys(b, "MODEL.MOBILENET_V2", {"widen_factor": "WIDEN_FACTOR", "strides": "STRIDES",
                                         "dilations": "DILATIONS"})
    t.norm_keys(b.take("norm_cfg"), f"{b.path}.norm_cfg", "MODEL.MOBILENET_V2")
    b.expect("act_cfg", dict(type="ReLU6"), dict(type="ReLU6"))
    b.expect("frozen_stages", -1, -1)
    b.expect("norm_eval", False, False)
    b.expect("with_cp", False, False)
    feats = t.out_features(b, "MODEL.MOBILENET_V2", [f"layer{i}" for i in range(1, 8)],
                           (1, 2, 4, 6))
    t.facts.update(backbone="M-V2-D8", backbone_id="m-v2-d8", backbone_rank=(10,))
    return t.channels_of(feats)


@register_family("MobileNetV3", ("MobileNetV3",), {"LRASPPHead": "lraspp_m-v3-d8"},
                 heads={"LRASPPHead": {"branch_channels": "MODEL.LRASPP_HEAD.BRANCH_CHANNELS"}})
def translate_v3(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_mobilenet_v3_backbone")
    arch = b.take("arch", "small")
    t.set("MODEL.MOBILENET_V3.ARCH", arch)
    t.take_keys(b, "MODEL.MOBILENET_V3", {"reduction_factor": "REDUCTION_FACTOR"})
    t.norm_keys(b.take("norm_cfg"), f"{b.path}.norm_cfg", "MODEL.MOBILENET_V3")
    b.expect("frozen_stages", -1, -1)
    b.expect("norm_eval", False, False)
    b.expect("with_cp", False, False)
    if arch not in ("small", "large"):
        raise TranslationError(f"{b.path}.arch={arch!r}: mmseg has 'small' and 'large'")
    n = {"small": 13, "large": 17}[arch]  # layer0 (stem) .. the last 1x1 conv
    feats = t.out_features(b, "MODEL.MOBILENET_V3", [f"layer{i}" for i in range(n)],
                           (0, 1, 12))
    name = {"small": "M-V3s-D8", "large": "M-V3-D8"}[arch]
    model = next(c for c in t.root.children if c.path == "model")
    scratch = not model.d.get("pretrained")
    t.facts.update(backbone=name + (" (scratch)" if scratch else ""), backbone_id=name,
                   backbone_rank=(10, arch != "large", scratch))
    return t.channels_of(feats)
