"""Fast-SCNN (mmseg's fastscnn/ config): its DepthwiseSeparableFCNHead decode head."""
from .common import TranslationError
from .registry import register_family

FEATURES = ["higher_res", "lower_res", "fusion"]  # mmseg's outputs 0..2


def _dw_fcn(t, args, node, path):
    """DepthwiseSeparableFCNHead: d2seg's depthwise convs have no activation (dw_act_cfg)."""
    if args.pop("dw_act_cfg", None) is not None:
        raise TranslationError(f"{path}.dw_act_cfg: d2seg only supports None")


@register_family("FastSCNN", ("FastSCNN",), {"DepthwiseSeparableFCNHead": "fast_scnn"},
                 heads={"DepthwiseSeparableFCNHead": {}},
                 head_hooks={"DepthwiseSeparableFCNHead": _dw_fcn})
def translate(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_fast_scnn_backbone")
    b.expect("in_channels", 3, 3)
    t.take_keys(b, "MODEL.FAST_SCNN", {
        "downsample_dw_channels": "DOWNSAMPLE_DW_CHANNELS",
        "global_in_channels": "GLOBAL_IN_CHANNELS",
        "global_block_channels": "GLOBAL_BLOCK_CHANNELS",
        "global_block_strides": "GLOBAL_BLOCK_STRIDES",
        "global_out_channels": "GLOBAL_OUT_CHANNELS",
        "fusion_out_channels": "FUSION_OUT_CHANNELS", "align_corners": "ALIGN_CORNERS"})
    f = t.cfg.MODEL.FAST_SCNN
    # the fusion module's inputs are the two branches' outputs (mmseg takes both widths)
    b.expect("higher_in_channels", f.GLOBAL_IN_CHANNELS, f.GLOBAL_IN_CHANNELS)
    b.expect("lower_in_channels", f.GLOBAL_OUT_CHANNELS, f.GLOBAL_OUT_CHANNELS)
    t.norm_keys(b.take("norm_cfg"), f"{b.path}.norm_cfg", "MODEL.FAST_SCNN")
    feats = t.out_features(b, "MODEL.FAST_SCNN", FEATURES, (0, 1, 2))
    t.facts.update(backbone="Fast-SCNN", backbone_id="fast_scnn", backbone_rank=(10,))
    return t.channels_of(feats)
