"""ConvNeXt (mmseg's convnext/: UPerNet + FCN auxiliary head on mmcls 0.25's ConvNeXt)."""
from .common import TranslationError
from .registry import register_family

FEATURES = ["convnext1", "convnext2", "convnext3", "convnext4"]
# mmcls's arch_settings: name -> (depths, channels)
ARCHS = {"tiny": ([3, 3, 9, 3], [96, 192, 384, 768]), "small": ([3, 3, 27, 3], [96, 192, 384, 768]),
         "base": ([3, 3, 27, 3], [128, 256, 512, 1024]),
         "large": ([3, 3, 27, 3], [192, 384, 768, 1536]),
         "xlarge": ([3, 3, 27, 3], [256, 512, 1024, 2048])}


@register_family("ConvNeXt", ("mmcls.ConvNeXt",), {"UPerHead": "upernet_convnext"})
def translate(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_convnext_backbone")
    # the config files' variables and mmcls's import, read through what they fed
    t.root.expect("custom_imports", dict(imports="mmcls.models", allow_failed_imports=False))
    t.init_variable("checkpoint_file", b)
    arch = b.take("arch", "tiny")
    if arch not in ARCHS:
        raise TranslationError(f"{b.path}.arch={arch!r}: one of {sorted(ARCHS)}")
    t.set("MODEL.CONVNEXT.DEPTHS", ARCHS[arch][0])
    t.set("MODEL.CONVNEXT.CHANNELS", ARCHS[arch][1])
    b.expect("in_channels", 3, 3)
    t.take_keys(b, "MODEL.CONVNEXT", {
        "stem_patch_size": "STEM_PATCH_SIZE", "linear_pw_conv": "LINEAR_PW_CONV",
        "drop_path_rate": "DROP_PATH_RATE", "layer_scale_init_value": "LAYER_SCALE_INIT_VALUE",
        "with_cp": "WITH_CP"})
    frozen = b.take("frozen_stages", 0)
    t.set("MODEL.CONVNEXT.FROZEN_STAGES", frozen)
    b.expect("norm_cfg", dict(type="LN2d", eps=1e-6), dict(type="LN2d", eps=1e-6))
    b.expect("act_cfg", dict(type="GELU"), dict(type="GELU"))
    b.expect("gap_before_final_norm", False, True)
    feats = t.out_features(b, "MODEL.CONVNEXT", FEATURES, 3)
    name = {"tiny": "T", "small": "S", "base": "B", "large": "L", "xlarge": "XL"}[arch]
    t.facts.update(backbone=f"ConvNeXt-{name}", backbone_id=f"convnext-{name.lower()}",
                   backbone_rank=(20, list(ARCHS).index(arch)))
    return t.channels_of(feats)
