"""DPT (mmseg's dpt/): ViT-B/16 with its class tokens + DPTHead."""
from .common import TranslationError
from .registry import extend_family


def _dpt_head(t, args, node, path):
    """DPTHead sizes its reassembly by the backbone's width and patch; only the plain
    (not expanded) post-process channels are built."""
    vit = t.cfg.MODEL.VIT
    for k, have in (("embed_dims", vit.EMBED_DIMS), ("patch_size", vit.PATCH_SIZE),
                    ("expand_channels", False)):
        if args.pop(k) != have:
            raise TranslationError(f"{path}.{k}: the backbone (d2seg) has {have!r}")
    if args["readout_type"] != "ignore" and not vit.OUTPUT_CLS_TOKEN:
        raise TranslationError(f"{path}.readout_type={args['readout_type']!r} reads class "
                               "tokens: the backbone's output_cls_token must be True")


extend_family(
    "VisionTransformer", {"DPTHead": "dpt_vit-b16"},
    heads={"DPTHead": {"post_process_channels": "MODEL.DPT_HEAD.POST_PROCESS_CHANNELS",
                       "readout_type": "MODEL.DPT_HEAD.READOUT_TYPE"}},
    head_hooks={"DPTHead": _dpt_head})
