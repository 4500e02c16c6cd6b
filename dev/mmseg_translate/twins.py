"""Twins (mmseg's twins/): PCPVT and SVT, with FPN + FPNHead or UPerNet + FCN auxiliary head."""
from .common import TranslationError
from .necks import HEAD_HOOKS, HEADS, translate_fpn
from .registry import register_family

FEATURES = ["twins1", "twins2", "twins3", "twins4"]
_SIZES = {("PCPVT", (3, 4, 6, 3)): "S", ("PCPVT", (3, 4, 18, 3)): "B",
          ("PCPVT", (3, 8, 27, 3)): "L", ("SVT", (2, 2, 10, 4)): "S",
          ("SVT", (2, 2, 18, 2)): "B", ("SVT", (2, 2, 18, 2), 128): "L"}


@register_family("Twins", ("PCPVT", "SVT"), {
    "FPNHead": "twins_pcpvt-s_fpn", "UPerHead": "twins_pcpvt-s_upernet"},
    heads=HEADS, head_hooks=HEAD_HOOKS)
def translate(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_pcpvt_backbone" if btype == "PCPVT" else
          "build_svt_backbone")
    # variables of the config files, read through the values they fed
    t.init_variable("checkpoint", b)
    t.variable("backbone_norm_cfg", b.d.get("norm_cfg"))
    b.expect("in_channels", 3, 3)
    t.take_keys(b, "MODEL.TWINS", {
        "embed_dims": "EMBED_DIMS", "num_heads": "NUM_HEADS", "patch_sizes": "PATCH_SIZES",
        "strides": "STRIDES", "mlp_ratios": "MLP_RATIOS", "depths": "DEPTHS",
        "sr_ratios": "SR_RATIOS", "windiow_sizes": "WINDOW_SIZES", "qkv_bias": "QKV_BIAS",
        "drop_rate": "DROP_RATE", "attn_drop_rate": "ATTN_DROP_RATE",
        "drop_path_rate": "DROP_PATH_RATE", "norm_after_stage": "NORM_AFTER_STAGE"})
    b.expect("norm_cfg", dict(type="LN"), dict(type="LN"))
    b.expect("pretrained", None, None)
    feats = t.out_features(b, "MODEL.TWINS", FEATURES, (0, 1, 2, 3))
    w = t.cfg.MODEL.TWINS
    key = (btype, tuple(w.DEPTHS))
    size = _SIZES.get(key + (w.EMBED_DIMS[0],)) or _SIZES.get(key)
    if size is None:
        raise TranslationError(f"{b.path}: depths {w.DEPTHS}: not {btype}-S/B/L")
    t.facts.update(backbone=f"{btype}-{size}", backbone_id=f"{btype.lower()}-{size.lower()}",
                   backbone_rank=(20, btype, "SBL".index(size)))
    channels = t.channels_of(feats)
    return translate_fpn(t, channels) if t.model.has("neck") else channels
