"""HRNetV2 (mmseg's hrnet/ and ocrnet/ HRNet configs)."""
from .common import TranslationError
from .registry import register_family


@register_family("HRNet", ("HRNet",), {"FCNHead": "fcn_hr18", "FCNHead+OCRHead": "ocrnet_hr18"})
def translate(t, b, btype):
    """HRNetV2: d2seg's HRNet (equal blocks per branch)."""
    extra = b.node("extra")
    stages = [extra.node(f"stage{i}") for i in range(1, 5)]
    modules, blocks = [], []
    for i, s in enumerate(stages):
        s.expect("num_branches", i + 1)
        s.expect("block", "BOTTLENECK" if i == 0 else "BASIC")
        modules.append(s.take("num_modules"))
        nb = list(s.take("num_blocks"))
        if len(set(nb)) != 1:
            raise TranslationError(f"{s.path}.num_blocks={nb}: d2seg needs equal branches")
        blocks.append(nb[0])
        s.channels = list(s.take("num_channels"))
    widths = stages[3].channels
    for i in (1, 2):
        if stages[i].channels != widths[: i + 1]:
            raise TranslationError(f"{stages[i].path}.num_channels != a prefix of stage4's")
    t.set("MODEL.BACKBONE.NAME", "build_hrnet_backbone")
    t.set("MODEL.HRNET.STAGE1_CHANNELS", stages[0].channels[0])
    t.set("MODEL.HRNET.BRANCH_CHANNELS", widths)
    t.set("MODEL.HRNET.NUM_MODULES", modules)
    t.set("MODEL.HRNET.NUM_BLOCKS", blocks)
    t.set("MODEL.HRNET.NORM", t.norm(b, "norm_cfg"))
    b.expect("norm_eval", False)
    bid = {18: "W18", 48: "W48"}[widths[0]]
    if bid == "W18" and blocks == [2, 2, 2, 2]:
        bid = "W18-Small"
    t.facts["backbone_id"] = bid
    t.facts["backbone"] = f"HRNetV2p-{bid}"
    t.facts["backbone_rank"] = (1, ["W18-Small", "W18", "W48"].index(bid))
    names = [f"hr{i + 1}" for i in range(4)]
    t.set("MODEL.HRNET.OUT_FEATURES", names)
    return dict(zip(names, widths))
