"""PoolFormer (mmseg's poolformer/: FPN + FPNHead on mmcls 0.25's PoolFormer)."""
from .common import TranslationError
from .necks import HEAD_HOOKS, HEADS, translate_fpn
from .registry import register_family

ARCHS = ("s12", "s24", "s36", "m36", "m48")


@register_family("PoolFormer", ("mmcls.PoolFormer",), {"FPNHead": "fpn_poolformer_s12"},
                 heads=HEADS, head_hooks=HEAD_HOOKS)
def translate(t, b, btype):
    t.set("MODEL.BACKBONE.NAME", "build_poolformer_backbone")
    t.root.expect("custom_imports", dict(imports="mmcls.models", allow_failed_imports=False))
    t.init_variable("checkpoint_file", b)
    arch = b.take("arch", "s12")
    if arch not in ARCHS:  # a dict arch: the custom keys exist, no zoo config uses them
        raise TranslationError(f"{b.path}.arch={arch!r}: one of {ARCHS}")
    t.set("MODEL.POOLFORMER.ARCH", arch)
    t.take_keys(b, "MODEL.POOLFORMER", {
        "pool_size": "POOL_SIZE", "in_patch_size": "IN_PATCH_SIZE", "in_stride": "IN_STRIDE",
        "in_pad": "IN_PAD", "down_patch_size": "DOWN_PATCH_SIZE", "down_stride": "DOWN_STRIDE",
        "down_pad": "DOWN_PAD", "drop_rate": "DROP_RATE", "drop_path_rate": "DROP_PATH_RATE",
        "frozen_stages": "FROZEN_STAGES"})
    b.expect("norm_cfg", dict(type="GN", num_groups=1), dict(type="GN", num_groups=1))
    b.expect("act_cfg", dict(type="GELU"), dict(type="GELU"))
    idx = list(b.take("out_indices", (-1,)))
    t.set("MODEL.POOLFORMER.OUT_INDICES", idx)
    t.facts.update(backbone=f"PoolFormer-{arch.upper()}", backbone_id=f"poolformer-{arch}",
                   backbone_rank=(20, ARCHS.index(arch)))
    return translate_fpn(t, t.channels_of([f"pf{i}" for i in idx]))
