"""ICNet (mmseg's icnet/ configs): the ICNet backbone around a ResNetV1c-D8 (backbone_cfg, d2seg's
MODEL.RESNETS) and its ICNeck (model.neck), whose outputs the FCN heads read."""
from collections import OrderedDict

from .common import TranslationError
from .registry import register_family
from .resnet import translate as translate_resnet

NECK_OUTPUTS = ["x_24", "x_12", "cff_12"]  # mmseg ICNeck's outputs 0..2


@register_family("ICNet", ("ICNet",), {"FCNHead": "icnet_r50-d8"})
def translate(t, b, btype):
    net = b.node("backbone_cfg")
    kind = net.take("type")
    if kind != "ResNetV1c":  # d2seg's ICNet (its deep-stem max pool) wraps a ResNetV1c
        raise TranslationError(f"{net.path}.type={kind!r}: d2seg's ICNet wraps a ResNetV1c")
    net.expect("in_channels", 3, 3)
    translate_resnet(t, net, kind)  # MODEL.RESNETS (also sets the backbone name: reset below)
    t.set("MODEL.BACKBONE.NAME", "build_icnet_backbone")
    t.backbone_init = t.init_node(net)  # the in1k-pre configs: backbone_cfg.init_cfg
    b.expect("init_cfg", None, None)
    b.expect("in_channels", 3, 3)
    t.take_keys(b, "MODEL.ICNET", {
        "layer_channels": "LAYER_CHANNELS",
        "light_branch_middle_channels": "LIGHT_BRANCH_MIDDLE_CHANNELS",
        "psp_out_channels": "PSP_OUT_CHANNELS", "out_channels": "OUT_CHANNELS",
        "pool_scales": "POOL_SCALES", "align_corners": "ALIGN_CORNERS"})
    t.set("MODEL.ICNET.NORM", t.norm(b, "norm_cfg"))
    b.expect("conv_cfg", None, None)
    b.expect("act_cfg", dict(type="ReLU"), dict(type="ReLU"))
    backbone = t.channels_of(["sub1", "sub2", "sub4"])

    neck = t.model.node("neck")
    neck.expect("type", "ICNeck")
    neck.expect("in_channels", list(backbone.values()), (64, 256, 256))
    t.set("MODEL.NECK.NAME", "ICNeck")
    t.set("MODEL.NECK.IN_FEATURES", list(backbone))
    t.set("MODEL.NECK.OUT_CHANNELS", neck.take("out_channels", 128))
    t.set("MODEL.NECK.ICNECK.NORM", t.norm(neck, "norm_cfg"))
    t.set("MODEL.NECK.ICNECK.ALIGN_CORNERS", neck.take("align_corners", False))
    neck.expect("conv_cfg", None, None)
    neck.expect("act_cfg", dict(type="ReLU"), dict(type="ReLU"))
    neck.expect("init_cfg", None, None)

    r = t.cfg.MODEL.RESNETS
    pre = bool(t.backbone_init.d)
    t.facts.update(backbone=f"R-{r.DEPTH}-D8" + (" (ImageNet)" if pre else ""),
                   backbone_id=r.DEPTH, backbone_rank=(10, r.DEPTH, pre))
    return _neck_channels(t, NECK_OUTPUTS)


def _neck_channels(t, names):
    """{output: channels} of the d2seg neck the cfg builds on its backbone (meta device)."""
    import torch
    from detectron2.modeling import build_backbone

    from d2seg.modeling.necks import build_neck

    with torch.device("meta"):
        shapes = build_neck(t.cfg, build_backbone(t.cfg).output_shape()).output_shape()
    return OrderedDict((n, shapes[n].channels) for n in names)
