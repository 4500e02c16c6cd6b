"""K-Net (mmseg's knet/): IterativeDecodeHead (a kernel-generate head + KernelUpdateHeads) on
ResNetV1c-50 (FCN, PSP, ASPP, UPer generators) or Swin (UPer)."""
from .common import Node, TranslationError, _norm
from . import read
from .registry import extend_family

_RELU = dict(type="ReLU", inplace=True)
# KernelUpdateHead argument -> MODEL.KNET_HEAD key
_KEYS = {"num_ffn_fcs": "NUM_FFN_FCS", "num_heads": "NUM_HEADS", "num_mask_fcs": "NUM_MASK_FCS",
         "feedforward_channels": "FEEDFORWARD_CHANNELS", "dropout": "DROPOUT",
         "conv_kernel_size": "CONV_KERNEL_SIZE", "with_ffn": "WITH_FFN",
         "feat_gather_stride": "FEAT_GATHER_STRIDE",
         "mask_transform_stride": "MASK_TRANSFORM_STRIDE"}
_GENERATORS = {"FCNHead": "knet_s3_fcn_r50-d8", "PSPHead": "knet_s3_pspnet_r50-d8",
               "ASPPHead": "knet_s3_deeplabv3_r50-d8", "UPerHead": "knet_s3_upernet_r50-d8"}


def _update_head(t, d, path, channels, num_classes):
    """One KernelUpdateHead dict (all stages must be the same: d2seg builds them from one set
    of keys)."""
    u = Node(d, path)
    t.root.children.append(u)
    u.expect("type", "KernelUpdateHead")
    if u.take("num_classes", 150) != num_classes:
        raise TranslationError(f"{path}.num_classes: not the kernel-generate head's")
    for k in ("in_channels", "out_channels"):
        if u.take(k, 256) != channels:
            raise TranslationError(f"{path}.{k}: d2seg's update heads have the kernel-generate "
                                   f"head's channels ({channels})")
    u.expect("act_cfg", _RELU, _RELU)
    u.expect("ffn_act_cfg", _RELU, _RELU)
    u.expect("kernel_init", False, False)
    defaults = dict(num_ffn_fcs=2, num_heads=8, num_mask_fcs=3, feedforward_channels=2048,
                    dropout=0.0, conv_kernel_size=1, with_ffn=True, feat_gather_stride=1,
                    mask_transform_stride=1)
    for arg, key in _KEYS.items():
        t.set(f"MODEL.KNET_HEAD.{key}", u.take(arg, defaults[arg]))
    feat = u.take("feat_transform_cfg", None)
    if feat is None:
        size = 0
    elif _norm(feat) == _norm(dict(conv_cfg=dict(type="Conv2d"), act_cfg=None)):
        size = t.cfg.MODEL.KNET_HEAD.CONV_KERNEL_SIZE  # mmseg's conv uses conv_kernel_size
    else:
        raise TranslationError(f"{path}.feat_transform_cfg={feat!r}: d2seg has None or a plain "
                               "conv (conv_cfg Conv2d, act_cfg None)")
    t.set("MODEL.KNET_HEAD.FEAT_TRANSFORM_KERNEL_SIZE", size)
    upd = Node(u.take("kernel_updator_cfg"), f"{path}.kernel_updator_cfg")
    t.root.children.append(upd)
    upd.expect("type", "KernelUpdator")
    for arg, key, default in (("in_channels", "IN", 256), ("feat_channels", "FEAT", 64),
                              ("out_channels", "OUT", None)):
        t.set(f"MODEL.KNET_HEAD.UPDATOR_{key}_CHANNELS", upd.take(arg, default))
    if t.cfg.MODEL.KNET_HEAD.UPDATOR_OUT_CHANNELS is None:  # mmseg: out = in
        t.set("MODEL.KNET_HEAD.UPDATOR_OUT_CHANNELS", t.cfg.MODEL.KNET_HEAD.UPDATOR_IN_CHANNELS)
    for k, v in dict(gate_sigmoid=True, gate_norm_act=False, activate_out=False,
                     norm_cfg=dict(type="LN"), act_cfg=_RELU).items():
        upd.expect(k, v, v)


def _iterative_head(t, args, node, path):
    """IterativeDecodeHead: its kernel-generate head is the decode head d2seg configures
    through ``node`` (mmseg's IterativeDecodeHead skips BaseDecodeHead's own arguments)."""
    stages = args.pop("num_stages")
    gen, update = args.pop("kernel_generate_head"), args.pop("kernel_update_head")
    if len(update) != stages:
        raise TranslationError(f"{path}: num_stages={stages} with {len(update)} update heads")
    if any(_norm(u) != _norm(update[0]) for u in update):
        raise TranslationError(f"{path}.kernel_update_head: d2seg builds identical stages")
    gtype = gen["type"]
    t.set("MODEL.KNET_HEAD.KERNEL_GENERATE_HEAD", gtype)
    t.set("MODEL.KNET_HEAD.NUM_STAGES", stages)
    args.clear()
    args.update(read.head_defaults(gtype))
    args.update({k: v for k, v in gen.items() if k != "type"})
    for i, u in enumerate(update):
        _update_head(t, u, f"{path}.kernel_update_head[{i}]", args["channels"],
                     args["num_classes"])
    # the config files' variables, read through the values they fed
    t.variable("num_stages", stages)
    t.variable("conv_kernel_size", t.cfg.MODEL.KNET_HEAD.CONV_KERNEL_SIZE)
    return gtype


def _resnet_base(t, heads):
    gtype = heads[0].d["kernel_generate_head"]["type"]
    if gtype not in _GENERATORS:
        raise TranslationError(f"{heads[0].path}.kernel_generate_head.type={gtype!r}: d2seg's "
                               f"K-Net bases have {sorted(_GENERATORS)}")
    return _GENERATORS[gtype]


extend_family("ResNetV1c", {"IterativeDecodeHead": _resnet_base},
              heads={"IterativeDecodeHead": {}},
              head_hooks={"IterativeDecodeHead": _iterative_head})
extend_family("SwinTransformer", {"IterativeDecodeHead": "knet_s3_upernet_swin-t"})
