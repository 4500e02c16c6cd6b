"""Swin Transformer (mmseg's swin/: UPerNet + FCN auxiliary head on SwinTransformer)."""
from .common import TranslationError, _norm
from .registry import register_family

FEATURES = ["swin1", "swin2", "swin3", "swin4"]
_SIZES = {(96, (2, 2, 6, 2)): "T", (96, (2, 2, 18, 2)): "S", (128, (2, 2, 18, 2)): "B",
          (192, (2, 2, 18, 2)): "L"}


@register_family("Swin", ("SwinTransformer",), {"UPerHead": "upernet_swin"})
def translate(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_swin_backbone")
    # variables of the B/L config files, already read through the values they fed
    # (K-Net's Swin configs name it through model.pretrained, the others through init_cfg)
    t.variable("checkpoint_file", (b.d.get("init_cfg") or {}).get("checkpoint") or
               t.model.d.get("pretrained"))
    t.variable("backbone_norm_cfg", b.d.get("norm_cfg"))
    b.expect("in_channels", 3, 3)
    t.take_keys(b, "MODEL.SWIN", {
        "embed_dims": "EMBED_DIMS", "depths": "DEPTHS", "num_heads": "NUM_HEADS",
        "patch_size": "PATCH_SIZE", "strides": "STRIDES", "window_size": "WINDOW_SIZE",
        "mlp_ratio": "MLP_RATIO", "qkv_bias": "QKV_BIAS", "patch_norm": "PATCH_NORM",
        "drop_rate": "DROP_RATE", "attn_drop_rate": "ATTN_DROP_RATE",
        "drop_path_rate": "DROP_PATH_RATE", "with_cp": "WITH_CP"})
    qk = b.take("qk_scale", None)
    t.set("MODEL.SWIN.QK_SCALE", 0.0 if qk is None else float(qk))
    # pretrain_img_size only sizes the absolute position embedding, which d2seg's Swin lacks
    b.expect("use_abs_pos_embed", False, False)
    b.take("pretrain_img_size", 224)
    b.expect("act_cfg", dict(type="GELU"), dict(type="GELU"))
    norm = b.take("norm_cfg", dict(type="LN"))  # mmcv's requires_grad defaults to True
    if _norm({"requires_grad": True, **norm}) != _norm(dict(type="LN", requires_grad=True)):
        raise TranslationError(f"{b.path}.norm_cfg={norm!r}: d2seg's Swin has LN")
    b.expect("frozen_stages", -1, -1)
    b.expect("pretrained", None, None)
    feats = t.out_features(b, "MODEL.SWIN", FEATURES, (0, 1, 2, 3))
    s = t.cfg.MODEL.SWIN
    size = _SIZES.get((s.EMBED_DIMS, tuple(s.DEPTHS)))
    if size is None:
        raise TranslationError(f"{b.path}: embed_dims {s.EMBED_DIMS} / depths {s.DEPTHS}: not "
                               "Swin-T/S/B/L")
    t.facts.update(backbone=f"Swin-{size}", backbone_id=f"swin-{size.lower()}",
                   backbone_rank=(20, "TSBL".index(size), s.WINDOW_SIZE))
    return t.channels_of(feats)
