"""Segmenter (mmseg's segmenter/): ViT-T/S/B/L + SegmenterMaskTransformerHead (or a linear
FCNHead)."""
from .common import TranslationError
from .registry import extend_family

_KEYS = {"num_layers": "NUM_LAYERS", "num_heads": "NUM_HEADS", "embed_dims": "EMBED_DIMS",
         "mlp_ratio": "MLP_RATIO", "drop_path_rate": "DROP_PATH_RATE", "drop_rate": "DROP_RATE",
         "attn_drop_rate": "ATTN_DROP_RATE", "qkv_bias": "QKV_BIAS", "init_std": "INIT_STD"}


def _mask_head(t, args, node, path):
    """The mask transformer's own LN / GELU / FFN (not BaseDecodeHead's conv norm)."""
    for k, v in dict(num_fcs=2, act_cfg=dict(type="GELU")).items():
        if args.pop(k) != v:
            raise TranslationError(f"{path}.{k}: d2seg's mask transformer has {v!r}")
    norm = args.pop("norm_cfg")
    if norm.get("type") != "LN" or set(norm) - {"type", "eps", "requires_grad"}:
        raise TranslationError(f"{path}.norm_cfg={norm!r}: the mask transformer has LN (eps)")
    t.set("MODEL.SEGMENTER_HEAD.NORM_EPS", float(norm.get("eps", 1e-5)))
    if args["embed_dims"] != args["channels"]:
        raise TranslationError(f"{path}: channels {args['channels']} != embed_dims")


def _linear(t, heads):
    """The linear variant (a 1x1 FCNHead) is a leaf of the mask one: same base; it does not
    read the mask transformer's keys."""
    t.unread_nodes.append("MODEL.SEGMENTER_HEAD")
    return "segmenter_vit-b16_mask"


extend_family(
    "VisionTransformer",
    {"SegmenterMaskTransformerHead": "segmenter_vit-b16_mask", "FCNHead": _linear},
    heads={"SegmenterMaskTransformerHead": {k: f"MODEL.SEGMENTER_HEAD.{v}"
                                            for k, v in _KEYS.items()}},
    head_hooks={"SegmenterMaskTransformerHead": _mask_head})
