"""SegFormer (mmseg's segformer/): MixVisionTransformer (MiT-B0..B5) + SegformerHead."""
from .common import TranslationError
from .registry import register_family

FEATURES = ["mit1", "mit2", "mit3", "mit4"]
_B = {(32, (2, 2, 2, 2)): "B0", (64, (2, 2, 2, 2)): "B1", (64, (3, 4, 6, 3)): "B2",
      (64, (3, 4, 18, 3)): "B3", (64, (3, 8, 27, 3)): "B4", (64, (3, 6, 40, 3)): "B5"}


def _segformer_head(t, args, node, path):
    """SegformerHead passes input_transform='multiple_select' to BaseDecodeHead itself."""
    args["input_transform"] = "multiple_select"
    mode = args.pop("interpolate_mode", "bilinear")
    if mode != "bilinear":
        raise TranslationError(f"{path}.interpolate_mode={mode!r}: d2seg's is bilinear")


@register_family("SegFormer", ("MixVisionTransformer",), {"SegformerHead": "segformer_mit-b0"},
                 heads={"SegformerHead": {}}, head_hooks={"SegformerHead": _segformer_head})
def translate(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_mit_backbone")
    b.expect("in_channels", 3, 3)
    b.expect("num_stages", 4, 4)
    t.take_keys(b, "MODEL.MIT", {
        "embed_dims": "EMBED_DIMS", "num_layers": "NUM_LAYERS", "num_heads": "NUM_HEADS",
        "patch_sizes": "PATCH_SIZES", "strides": "STRIDES", "sr_ratios": "SR_RATIOS",
        "mlp_ratio": "MLP_RATIO", "qkv_bias": "QKV_BIAS", "drop_rate": "DROP_RATE",
        "attn_drop_rate": "ATTN_DROP_RATE", "drop_path_rate": "DROP_PATH_RATE"})
    b.expect("act_cfg", dict(type="GELU"), dict(type="GELU"))
    b.expect("norm_cfg", dict(type="LN", eps=1e-6), dict(type="LN", eps=1e-6))
    b.expect("with_cp", False, False)
    feats = t.out_features(b, "MODEL.MIT", FEATURES, (0, 1, 2, 3))
    m = t.cfg.MODEL.MIT
    name = _B.get((m.EMBED_DIMS, tuple(m.NUM_LAYERS)), "custom")
    t.facts.update(backbone=f"MiT-{name}", backbone_id=f"mit-{name.lower()}",
                   backbone_rank=(20, name))
    return t.channels_of(feats)
