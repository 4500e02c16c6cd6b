"""BiSeNetV1 (mmseg's bisenetv1/ configs): spatial path + a ResNet context path (backbone_cfg,
d2seg's MODEL.RESNETS), with an FCN decode head and two auxiliary FCN heads."""
from .common import TranslationError
from .registry import register_family
from .resnet import translate as translate_resnet

FEATURES = ["fusion", "context8", "context16"]  # mmseg's outputs 0..2


@register_family("BiSeNetV1", ("BiSeNetV1",), {"FCNHead": "bisenetv1_r18-d32"})
def translate(t, b, btype):
    net = b.node("backbone_cfg")  # the context path's network
    kind = net.take("type")
    if kind != "ResNet":  # d2seg's BiSeNetV1 checkpoint rules are those of a plain ResNet
        raise TranslationError(f"{net.path}.type={kind!r}: d2seg's BiSeNetV1 context path is "
                               "a plain ResNet")
    net.expect("in_channels", 3, 3)
    translate_resnet(t, net, kind)  # MODEL.RESNETS (also sets the backbone name: reset below)
    t.set("MODEL.BACKBONE.NAME", "build_bisenetv1_backbone")
    t.backbone_init = t.init_node(net)  # the in1k-pre configs: backbone_cfg.init_cfg
    b.expect("init_cfg", None, None)
    b.expect("in_channels", 3, 3)
    t.take_keys(b, "MODEL.BISENETV1", {
        "spatial_channels": "SPATIAL_CHANNELS", "context_channels": "CONTEXT_CHANNELS",
        "out_channels": "OUT_CHANNELS"})
    # mmseg 0.30 hands BiSeNetV1's norm_cfg to no sub-module (plain BN): MODEL.BISENETV1.NORM
    # stays "BN" whatever the config says
    b.take("norm_cfg", None)
    b.expect("align_corners", False, False)
    b.expect("conv_cfg", None, None)
    b.expect("act_cfg", dict(type="ReLU"), dict(type="ReLU"))
    feats = t.out_features(b, "MODEL.BISENETV1", FEATURES, (0, 1, 2))
    depth = t.cfg.MODEL.RESNETS.DEPTH
    pre = bool(t.backbone_init.d)
    t.facts.update(backbone=f"R-{depth}-D32" + (" (ImageNet)" if pre else ""),
                   backbone_id=depth, backbone_rank=(10, depth, pre))
    return t.channels_of(feats)
