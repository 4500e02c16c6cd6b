"""Segmenter's mask head and DPT's head beyond parity (tests/parity/test_parity_segmenter.py,
test_parity_dpt.py): bad config values named in errors, and DPT's readout asking for the class
tokens. Their ONNX export runs with the other families' in tests/test_realtime.py (SEGMENTER and
DPT entries)."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg

# narrow models (yaml, overrides) for these tests, the parity tests and the export test: ViT of
# 32 dims / 2 heads; Segmenter: 3 layers, pos_embed grid 4x4 (img 64), a 32-dim mask
# transformer; DPT: 4 layers (all outputs), its img_size 224, head 16 channels
SEGMENTER = ("segmenter_vit-b16_mask", [
    "MODEL.VIT.EMBED_DIMS", 32, "MODEL.VIT.NUM_LAYERS", 3, "MODEL.VIT.NUM_HEADS", 2,
    "MODEL.VIT.IMG_SIZE", [64, 64], "MODEL.VIT.OUT_INDICES", [2],
    "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["vit2"], "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7, "MODEL.SEGMENTER_HEAD.EMBED_DIMS", 32,
    "MODEL.SEGMENTER_HEAD.NUM_HEADS", 2])
DPT = ("dpt_vit-b16", [
    "MODEL.VIT.EMBED_DIMS", 32, "MODEL.VIT.NUM_LAYERS", 4, "MODEL.VIT.NUM_HEADS", 2,
    "MODEL.VIT.OUT_INDICES", [0, 1, 2, 3],
    "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["vit0", "vit1", "vit2", "vit3"],
    "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7, "MODEL.DPT_HEAD.POST_PROCESS_CHANNELS", [8, 16, 32, 64]])


def tiny_cfg(spec, opts=()):
    yaml, extra = spec
    return get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml", [*extra, *opts])


@pytest.mark.parametrize("spec, opts, message", [
    (SEGMENTER, ["MODEL.SEGMENTER_HEAD.NUM_HEADS", 3],
     "SEGMENTER_HEAD.EMBED_DIMS=32 must be a multiple of MODEL.SEGMENTER_HEAD.NUM_HEADS=3"),
    (SEGMENTER, ["MODEL.SEGMENTER_HEAD.NUM_LAYERS", 0], "SEGMENTER_HEAD.NUM_LAYERS=0"),
    (SEGMENTER, ["MODEL.SEM_SEG_HEAD.INPUT_TRANSFORM", "resize_concat"],
     "INPUT_TRANSFORM='resize_concat' must be ''"),
    (DPT, ["MODEL.DPT_HEAD.READOUT_TYPE", "concat"], "READOUT_TYPE='concat'"),
    (DPT, ["MODEL.DPT_HEAD.POST_PROCESS_CHANNELS", [8, 16, 32]],
     r"POST_PROCESS_CHANNELS=\[8, 16, 32\] must each have 4"),
    (DPT, ["MODEL.VIT.OUT_INDICES", [1, 2, 3], "MODEL.SEM_SEG_HEAD.IN_FEATURES",
           ["vit1", "vit2", "vit3"]], r"IN_FEATURES=\['vit1', 'vit2', 'vit3'\]"),
])
def test_bad_config_values_are_named(spec, opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(tiny_cfg(spec, opts))


def test_dpt_readout_needs_the_class_tokens():
    """'project' and 'add' read ``vit{i}_cls``; without OUTPUT_CLS_TOKEN the error says so,
    while 'ignore' runs on the maps alone."""
    x = torch.randn(1, 3, 48, 64)
    model = build_model(tiny_cfg(DPT, ["MODEL.VIT.OUTPUT_CLS_TOKEN", False])).eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"\['vit0_cls'.*OUTPUT_CLS_TOKEN"):
        model.encode_decode(x)
    model = build_model(tiny_cfg(DPT, ["MODEL.VIT.OUTPUT_CLS_TOKEN", False,
                                       "MODEL.DPT_HEAD.READOUT_TYPE", "ignore"])).eval()
    with torch.no_grad():
        # 3x4 grid -> 2x2 at 1/32, doubled four times: 32x32 logits, resized to the input
        assert model.decode(model.extract_feat(x)).shape == (1, 7, 32, 32)
        assert model.encode_decode(x).shape == (1, 7, 48, 64)
