"""ResNetV1c / ResNet (the 13 classic methods' backbone, also BiSeNetV1 / ICNet's inside)."""
from .common import TranslationError
from .registry import register_family

BASE_MODELS = {  # decode-head type -> d2seg base model yaml
    "FCNHead": "fcn_r50-d8",
    "PSPHead": "pspnet_r50-d8",
    "PSAHead": "psanet_r50-d8",
    "ASPPHead": "deeplabv3_r50-d8",
    "DepthwiseSeparableASPPHead": "deeplabv3plus_r50-d8",
    "UPerHead": "upernet_r50",
    "GCHead": "gcnet_r50-d8",
    "NLHead": "nonlocal_r50-d8",
    "CCHead": "ccnet_r50-d8",
    "DAHead": "danet_r50-d8",
    "ANNHead": "ann_r50-d8",
    "FCNHead+OCRHead": "ocrnet_r50-d8",
}


@register_family("ResNet", ("ResNetV1c", "ResNet"), BASE_MODELS)
def translate(t, b, btype):
    """ResNetV1c (deep stem) / ResNet (V1b): d2seg's dilated ResNet."""
    depth = b.take("depth")
    t.facts["backbone_id"] = depth
    t.set("MODEL.BACKBONE.NAME", "build_dilated_resnet_backbone")
    t.set("MODEL.BACKBONE.FREEZE_AT", 0)  # norm_eval=False, frozen_stages=-1
    t.set("MODEL.RESNETS.DEPTH", depth)
    # ResNetV1c: deep stem (3 x conv3x3); ResNet (V1b, torchvision's layout): 7x7 conv
    t.set("MODEL.RESNETS.STEM_TYPE", "deeplab" if btype == "ResNetV1c" else "basic")
    b.expect("num_stages", 4)
    dilations, strides = list(b.take("dilations")), list(b.take("strides"))
    t.set("MODEL.RESNETS.STAGE_DILATIONS", dilations)
    t.set("MODEL.RESNETS.STAGE_STRIDES", strides)
    t.set("MODEL.RESNETS.CONTRACT_DILATION", b.take("contract_dilation"))
    grid = list(b.take("multi_grid", None) or [])
    t.set("MODEL.RESNETS.RES5_DILATION_PER_BLOCK", grid)
    style = b.take("style")
    if style not in ("pytorch", "caffe"):
        raise TranslationError(f"{t.stem}: ResNet style {style!r}")
    t.set("MODEL.RESNETS.STRIDE_IN_1X1", style == "caffe")
    t.set("MODEL.RESNETS.NORM", t.norm(b, "norm_cfg"))
    b.expect("norm_eval", False)
    out = ["res2", "res3", "res4", "res5"]
    idx = list(b.take("out_indices"))
    t.set("MODEL.RESNETS.OUT_FEATURES", [out[i] for i in idx])
    expansion = 4 if depth >= 50 else 1  # Bottleneck / BasicBlock
    base = 64 * expansion  # mmseg's defaults: stem_channels=base_channels=64
    t.set("MODEL.RESNETS.RES2_OUT_CHANNELS", base)
    # mmseg's names: R-50-D8 (output stride 8, dilated), R-50b (V1b), R-101-D16-MG124
    os_ = 4
    for stride in strides:
        os_ *= stride
    name = f"R-{depth}" + ("b" if btype == "ResNet" else "")
    if set(dilations) != {1}:
        name += f"-D{os_}"
    if grid:
        name += "-MG" + "".join(map(str, grid))
    t.facts["backbone"] = name
    t.facts["backbone_rank"] = (0, depth, btype == "ResNet", os_, len(grid))
    return {f: base * 2 ** i for i, f in enumerate(out) if i in idx}
