"""Plain ViTs (mmseg's vit/: ViT-B and DeiT-S/B + UPerNet, with MultiLevelNeck or without;
beit/ and mae/: BEiT and MAE + Feature2Pyramid + UPerNet)."""
from collections import OrderedDict

from .common import TranslationError
from .necks import neck_shapes
from .registry import register_family

_COMMON = {"patch_size": "PATCH_SIZE", "embed_dims": "EMBED_DIMS", "num_layers": "NUM_LAYERS",
           "num_heads": "NUM_HEADS", "mlp_ratio": "MLP_RATIO", "drop_path_rate": "DROP_PATH_RATE",
           "patch_norm": "PATCH_NORM", "final_norm": "FINAL_NORM", "with_cp": "WITH_CP"}


def _expect_common(t, b, node):
    b.expect("in_channels", 3, 3)
    b.expect("act_cfg", dict(type="GELU"), dict(type="GELU"))
    b.expect("norm_eval", False, False)
    b.expect("pretrained", None, None)
    size = b.take("img_size", 224)
    t.set(f"{node}.IMG_SIZE", [size, size] if isinstance(size, int) else list(size))
    idx = b.take("out_indices", -1)
    idx = [idx] if isinstance(idx, int) else list(idx)
    return [i if i >= 0 else cfg_layers(t, node) + i for i in idx]


def cfg_layers(t, node):
    return t.cfg.MODEL[node.split(".")[-1]].NUM_LAYERS


def _neck(t, channels):
    """MultiLevelNeck / Feature2Pyramid (or none) -> MODEL.NECK; {output: channels}."""
    if t.model.d.get("neck") is None:  # DeiT without a neck: neck=None in its config
        t.model.take("neck", None)
        t.set("MODEL.NECK.NAME", "")
        return channels
    neck = t.model.node("neck")
    kind = neck.take("type")
    t.set("MODEL.NECK.NAME", kind)
    t.set("MODEL.NECK.IN_FEATURES", list(channels))
    if kind == "MultiLevelNeck":
        neck.expect("in_channels", list(channels.values()))
        t.set("MODEL.NECK.OUT_CHANNELS", neck.take("out_channels"))
        t.set("MODEL.NECK.SCALES", [float(s) for s in neck.take("scales", [0.5, 1, 2, 4])])
        neck.expect("norm_cfg", None, None)
        neck.expect("act_cfg", None, None)
    elif kind == "Feature2Pyramid":
        if neck.take("embed_dim") != list(channels.values())[0]:
            raise TranslationError(f"{neck.path}.embed_dim: not the backbone's width")
        t.set("MODEL.NECK.RESCALES", [float(s) for s in neck.take("rescales", [4, 2, 1, 0.5])])
        norm = neck.take("norm_cfg", dict(type="SyncBN", requires_grad=True))  # mmseg's default
        t.norm_keys(norm, f"{neck.path}.norm_cfg", "MODEL.NECK")
    elif kind == "MLANeck":  # SETR-MLA
        neck.expect("in_channels", list(channels.values()))
        t.set("MODEL.NECK.OUT_CHANNELS", neck.take("out_channels"))
        neck.expect("norm_layer", dict(type="LN", eps=1e-6, requires_grad=True),
                    dict(type="LN", eps=1e-6, requires_grad=True))
        norm = neck.take("norm_cfg", None)
        if norm is not None and (norm.get("requires_grad") is not True or
                                 set(norm) != {"type", "requires_grad"}):
            raise TranslationError(f"{neck.path}.norm_cfg={norm!r}: d2seg takes a trainable "
                                   "norm type")
        t.set("MODEL.NECK.MLA.NORM", "" if norm is None else norm["type"])
        act = neck.take("act_cfg", None)
        if act is not None and set(act) != {"type"}:
            raise TranslationError(f"{neck.path}.act_cfg={act!r}: d2seg takes a type only")
        t.set("MODEL.NECK.MLA.ACTIVATION", "" if act is None else act["type"])
    else:
        raise TranslationError(f"{neck.path}.type={kind!r}: d2seg's ViTs have MultiLevelNeck, "
                               "Feature2Pyramid and MLANeck")
    return OrderedDict((n, s.channels) for n, s in neck_shapes(t).items())


def _one_base(t, kind, name):
    """mmseg's upernet_vit-b16_ln_mln base model (final norm on) is d2seg's upernet_vit-b16_mln
    with MODEL.VIT.FINAL_NORM written out in each leaf."""
    return (kind, t.base_model) if kind == "model" else (kind, name)


@register_family("ViT", ("VisionTransformer",), {"UPerHead": "upernet_vit-b16_mln"},
                 parent=_one_base)
def translate_vit(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_vit_backbone")
    t.take_keys(b, "MODEL.VIT", {**_COMMON, "qkv_bias": "QKV_BIAS", "drop_rate": "DROP_RATE",
                                 "attn_drop_rate": "ATTN_DROP_RATE",
                                 "with_cls_token": "WITH_CLS_TOKEN",
                                 "output_cls_token": "OUTPUT_CLS_TOKEN",
                                 "interpolate_mode": "INTERPOLATE_MODE"})
    t.variable("backbone_norm_cfg", b.d.get("norm_cfg"))
    norm = b.take("norm_cfg", dict(type="LN"))
    if set(norm) - {"type", "eps", "requires_grad"} or norm["type"] != "LN" or \
            norm.get("requires_grad", True) is not True:
        raise TranslationError(f"{b.path}.norm_cfg={norm!r}: d2seg's ViT has LN (eps)")
    t.set("MODEL.VIT.NORM_EPS", float(norm.get("eps", 1e-5)))
    idx = _expect_common(t, b, "MODEL.VIT")
    t.set("MODEL.VIT.OUT_INDICES", idx)
    v = t.cfg.MODEL.VIT
    size = {192: "T", 384: "S", 768: "B", 1024: "L"}.get(v.EMBED_DIMS, "custom")
    name = f"{'DeiT' if 'deit' in t.stem else 'ViT'}-{size}"
    neck = "+MLN" if t.model.d.get("neck") else ""
    t.facts.update(backbone=name + ("+LN" if v.FINAL_NORM else "") + neck,
                   backbone_id=name.lower(), backbone_rank=(20, name, v.FINAL_NORM, neck))
    return _neck(t, t.channels_of([f"vit{i}" for i in idx]))


def _beit(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", f"build_{btype.lower()}_backbone")
    t.take_keys(b, "MODEL.BEIT", {**_COMMON, "qv_bias": "QV_BIAS", "init_values": "INIT_VALUES"})
    b.expect("norm_cfg", dict(type="LN", eps=1e-6), dict(type="LN", eps=1e-6))
    b.expect("attn_drop_rate", 0.0, 0.0)
    b.expect("drop_rate", 0.0, 0.0)
    idx = _expect_common(t, b, "MODEL.BEIT")
    t.set("MODEL.BEIT.OUT_INDICES", idx)
    size = {768: "B", 1024: "L"}.get(t.cfg.MODEL.BEIT.EMBED_DIMS, "custom")
    t.facts.update(backbone=f"{btype}-{size}", backbone_id=f"{btype.lower()}-{size.lower()}",
                   backbone_rank=(20, btype, size))
    return _neck(t, t.channels_of([f"{btype.lower()}{i}" for i in idx]))


register_family("BEiT", ("BEiT",), {"UPerHead": "upernet_beit"})(_beit)
register_family("MAE", ("MAE",), {"UPerHead": "upernet_mae"})(_beit)
