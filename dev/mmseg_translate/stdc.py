"""STDC (mmseg's stdc/ configs): STDCContextPathNet around STDCNet, and STDCHead's detail loss."""
from .common import Node, TranslationError
from .registry import register_family

FEATURES = ["detail", "context16", "context8", "fusion"]  # mmseg's outputs 0..3


def _stdc_head(t, args, node, path):
    """STDCHead: its own 2 detail classes and a [sigmoid CE, Dice] loss on one target."""
    t.set("MODEL.STDC_HEAD.NUM_CLASSES", args.pop("num_classes"))
    t.set("MODEL.STDC_HEAD.BOUNDARY_THRESHOLD", args.pop("boundary_threshold"))
    losses = args.pop("loss_decode")
    kinds = [d.get("type") for d in losses] if isinstance(losses, (list, tuple)) else losses
    if kinds != ["CrossEntropyLoss", "DiceLoss"]:
        raise TranslationError(f"{path}.loss_decode={losses!r}: d2seg's STDCHead has "
                               "[CrossEntropyLoss (sigmoid), DiceLoss]")
    dice = Node(losses[1], f"{path}.loss_decode[1]")
    t.root.children.append(dice)
    dice.take("type")
    dice.expect("loss_name", "loss_dice", "loss_dice")
    for k, v in dict(smooth=1, exponent=2, reduction="mean", class_weight=None,
                     ignore_index=255).items():
        dice.expect(k, v, v)
    t.set("MODEL.STDC_HEAD.DICE_LOSS_WEIGHT", float(dice.take("loss_weight", 1.0)))
    args["loss_decode"] = losses[0]  # the generic cross-entropy translation reads this one


@register_family("STDC", ("STDCContextPathNet",), {"FCNHead": "stdc"},
                 heads={"STDCHead": {}}, head_hooks={"STDCHead": _stdc_head})
def translate(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_stdc_backbone")
    net = b.node("backbone_cfg")
    net.expect("type", "STDCNet")
    net.expect("in_channels", 3, 3)
    net.expect("act_cfg", dict(type="ReLU"), dict(type="ReLU"))
    t.take_keys(net, "MODEL.STDC", {
        "stdc_type": "TYPE", "channels": "CHANNELS", "bottleneck_type": "BOTTLENECK_TYPE",
        "num_convs": "NUM_CONVS", "with_final_conv": "WITH_FINAL_CONV"})
    norm = net.take("norm_cfg")
    t.norm_keys(norm, f"{net.path}.norm_cfg", "MODEL.STDC")
    ctx = b.take("norm_cfg", dict(type="BN"))  # the context path's (mmseg's default: BN)
    if ctx.get("type") != norm.get("type"):  # d2seg: one MODEL.STDC.NORM for both parts
        raise TranslationError(f"{b.path}.norm_cfg differs from backbone_cfg.norm_cfg: d2seg's "
                               "MODEL.STDC.NORM is both")
    t.backbone_init = t.init_node(net)
    s = t.cfg.MODEL.STDC
    t.take_keys(b, "MODEL.STDC", {"out_channels": "OUT_CHANNELS",
                                 "upsample_mode": "UPSAMPLE_MODE"})
    align = b.take("align_corners", None)  # mmseg: None with nearest upsampling
    if align is not None:
        t.set("MODEL.STDC.ALIGN_CORNERS", align)
    last = max(1024, s.CHANNELS[-1]) if s.WITH_FINAL_CONV else s.CHANNELS[-1]
    b.expect("last_in_channels", [last, s.CHANNELS[-2]], (1024, 512))
    ffm = b.node("ffm_cfg")
    ffm.expect("in_channels", s.CHANNELS[2] + s.OUT_CHANNELS)  # detail (stage 3) + context8
    t.take_keys(ffm, "MODEL.STDC", {"out_channels": "FFM_OUT_CHANNELS",
                                   "scale_factor": "FFM_SCALE_FACTOR"})
    pre = bool(t.backbone_init.d)  # the in1k-pre configs
    t.facts.update(backbone=f"STDC{s.TYPE[-1]}" + (" (ImageNet)" if pre else ""),
                   backbone_id=s.TYPE, backbone_rank=(10, s.TYPE, pre))
    return t.channels_of(FEATURES)
