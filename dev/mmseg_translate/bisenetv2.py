"""BiSeNetV2 (mmseg's bisenetv2/ configs)."""
from .registry import register_family

FEATURES = ["bga", "stage1", "stage2", "stage3", "stage4"]  # mmseg's outputs 0..4


@register_family("BiSeNetV2", ("BiSeNetV2",), {"FCNHead": "bisenetv2"})
def translate(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_bisenetv2_backbone")
    b.expect("in_channels", 3, 3)
    t.take_keys(b, "MODEL.BISENETV2", {
        "detail_channels": "DETAIL_CHANNELS", "semantic_channels": "SEMANTIC_CHANNELS",
        "semantic_expansion_ratio": "SEMANTIC_EXPANSION_RATIO", "bga_channels": "BGA_CHANNELS",
        "align_corners": "ALIGN_CORNERS"})
    # mmseg 0.30 hands BiSeNetV2's norm_cfg to no sub-module (plain BN): MODEL.BISENETV2.NORM
    # stays "BN" whatever the config says
    b.take("norm_cfg", None)
    feats = t.out_features(b, "MODEL.BISENETV2", FEATURES, (0, 1, 2, 3, 4))
    t.facts.update(backbone="BiSeNetV2", backbone_id="bisenetv2", backbone_rank=(10,))
    return t.channels_of(feats)
