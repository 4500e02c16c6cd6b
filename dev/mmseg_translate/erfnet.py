"""ERFNet (mmseg's erfnet/ configs)."""
from .common import TranslationError
from .registry import register_family


@register_family("ERFNet", ("ERFNet",), {"FCNHead": "erfnet_fcn"})
def translate(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_erfnet_backbone")
    b.expect("in_channels", 3, 3)
    t.take_keys(b, "MODEL.ERFNET", {
        "enc_downsample_channels": "ENC_DOWNSAMPLE_CHANNELS",
        "enc_stage_non_bottlenecks": "ENC_STAGE_NON_BOTTLENECKS",
        "enc_non_bottleneck_dilations": "ENC_NON_BOTTLENECK_DILATIONS",
        "dec_stages_non_bottleneck": "DEC_STAGES_NON_BOTTLENECK",
        "dec_non_bottleneck_channels": "DEC_NON_BOTTLENECK_CHANNELS",
        "dropout_ratio": "DROPOUT"})
    e = t.cfg.MODEL.ERFNET
    # mmseg only checks these two lists' lengths (the widths come from the lists above)
    for arg, n in (("enc_non_bottleneck_channels", len(e.ENC_STAGE_NON_BOTTLENECKS)),
                   ("dec_upsample_channels", len(e.DEC_STAGES_NON_BOTTLENECK))):
        v = b.take(arg, None)
        if v is not None and len(v) != n:
            raise TranslationError(f"{b.path}.{arg}={v!r}: mmseg asserts {n} entries")
    # mmseg 0.30 builds every ERFNet norm as BN eps 1e-3, ignoring norm_cfg / act_cfg
    b.take("norm_cfg", None)
    b.take("act_cfg", None)
    t.facts.update(backbone="ERFNet", backbone_id="erfnet", backbone_rank=(10,))
    return t.channels_of(["decoder"])
