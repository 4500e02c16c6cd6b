"""Necks shared by families: mmseg's FPN (Twins, PoolFormer) and the FPNHead that reads it."""
from collections import OrderedDict

from .common import TranslationError


def neck_shapes(t):
    """{output: ShapeSpec} of the d2seg neck the cfg builds on its backbone (meta device)."""
    import torch
    from detectron2.modeling import build_backbone

    from d2seg.modeling.necks import build_neck

    with torch.device("meta"):
        return build_neck(t.cfg, build_backbone(t.cfg).output_shape()).output_shape()


def translate_fpn(t, backbone):
    """model.neck = mmseg's FPN on ``backbone`` ({feature: channels}) -> MODEL.NECK; returns the
    neck's {fpn<i>: channels} (the heads' in_index counts in these)."""
    neck = t.model.node("neck")
    neck.expect("type", "FPN")
    neck.expect("in_channels", list(backbone.values()))
    t.set("MODEL.NECK.NAME", "FPN")
    t.set("MODEL.NECK.IN_FEATURES", list(backbone))
    t.set("MODEL.NECK.OUT_CHANNELS", neck.take("out_channels"))
    t.set("MODEL.NECK.NUM_OUTS", neck.take("num_outs"))
    t.take_keys(neck, "MODEL.NECK.FPN", {
        "start_level": "START_LEVEL", "end_level": "END_LEVEL",
        "relu_before_extra_convs": "RELU_BEFORE_EXTRA_CONVS",
        "no_norm_on_lateral": "NO_NORM_ON_LATERAL"})
    extra = neck.take("add_extra_convs", False)
    if neck.take("extra_convs_on_inputs", False) and extra is True:
        extra = "on_input"
    t.set("MODEL.NECK.FPN.ADD_EXTRA_CONVS", {False: "", True: "on_output"}.get(extra, extra))
    neck.expect("conv_cfg", None, None)
    norm = neck.take("norm_cfg", None)
    if norm is not None:
        raise TranslationError(f"{neck.path}.norm_cfg={norm!r}: the zoo's FPNs have none")
    act = neck.take("act_cfg", None)
    t.set("MODEL.NECK.FPN.ACTIVATION", "" if act is None else act.get("type", ""))
    up = dict(neck.take("upsample_cfg", dict(mode="nearest")))
    t.set("MODEL.NECK.FPN.UPSAMPLE_MODE", up.pop("mode", "nearest"))
    if up:
        raise TranslationError(f"{neck.path}.upsample_cfg: {sorted(up)} not translated")
    neck.expect("init_cfg", dict(type="Xavier", layer="Conv2d", distribution="uniform"),
                dict(type="Xavier", layer="Conv2d", distribution="uniform"))
    shapes = neck_shapes(t)
    t.facts["neck_strides"] = {n: s.stride for n, s in shapes.items()}
    return OrderedDict((n, s.channels) for n, s in shapes.items())


def fpn_head(t, args, node, path):
    """FPNHead passes input_transform='multiple_select' itself; its feature_strides must be
    those of the features it reads (d2seg reads them from the neck)."""
    args["input_transform"] = "multiple_select"
    strides = list(args.pop("feature_strides"))
    have = [t.facts.get("neck_strides", {}).get(f"fpn{i}") for i in args["in_index"]]
    if strides != have:
        raise TranslationError(f"{path}.feature_strides={strides}: its inputs have {have}")


HEADS = {"FPNHead": {}}
HEAD_HOOKS = {"FPNHead": fpn_head}
