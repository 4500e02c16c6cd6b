"""CGNet (mmseg's cgnet/ configs)."""
from .registry import register_family


@register_family("CGNet", ("CGNet",), {"FCNHead": "cgnet"})
def translate(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_cgnet_backbone")
    b.expect("in_channels", 3, 3)
    b.expect("act_cfg", dict(type="PReLU"), dict(type="PReLU"))
    t.take_keys(b, "MODEL.CGNET", {"num_channels": "NUM_CHANNELS", "num_blocks": "NUM_BLOCKS",
                                  "dilations": "DILATIONS", "reductions": "REDUCTIONS"})
    t.norm_keys(b.take("norm_cfg"), f"{b.path}.norm_cfg", "MODEL.CGNET")
    b.expect("norm_eval", False, False)
    t.facts.update(backbone="M3N21", backbone_id="cgnet", backbone_rank=(10,))
    return t.channels_of(["stage0", "stage1", "stage2"])
