"""DPT (VisionTransformer with class tokens + DPTHead): d2seg vs MMSegmentation 0.30 with the same
(randomised) weights, read from an mmseg checkpoint file by SegCheckpointer, at a narrow width
(embed 32, 4 layers, 2 heads, all four outputs; DPT's img_size 224, so its 14x14 pos_embed is
resized at every forward; head 16 channels, post-process [8, 16, 32, 64], 7 classes): logits
and the head's 1/2 output at 65x97 (a 5x7 grid; reassembled to 20x28 ... 3x4, so every fusion
resizes its lateral) in float32 and float64, for each readout; one training step's loss and
gradients (float64, BN in training mode); the from-scratch head init against mmseg's; and the
parameter names and shapes of mmseg's own DPT config."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from test_checkpoint_formats import one_thread  # noqa: F401  (autouse: small inputs, 1 thread)
from test_segmenter_dpt import DPT

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

from test_parity_segmenter import (  # noqa: E402
    assert_same_head_init, assert_training_step_matches, logits_and_head_outputs)
from test_parity_vit import assert_mmseg_shapes  # noqa: E402

YAML = REPO_CONFIGS / "_base_/models/dpt_vit-b16.yaml"
WIDTH, LAYERS, HEADS, CLASSES = 32, 4, 2, 7
POST = [8, 16, 32, 64]
OUTS = [f"vit{i}" for i in range(LAYERS)]
NARROW = DPT[1]  # the same widths, as overrides of YAML
SIZE = (65, 97)


def _pair(tmp_path, readout="project"):
    """mmseg's model (random weights, BN statistics calibrated at SIZE) and d2seg's, loaded from
    its mmseg 0.x checkpoint file by SegCheckpointer."""
    cfg = mmseg_peer.mmseg_config("_base_/models/dpt_vit-b16")
    cfg.model.backbone.update(embed_dims=WIDTH, num_layers=LAYERS, num_heads=HEADS,
                              out_indices=tuple(range(LAYERS)))
    cfg.model.decode_head.update(in_channels=(WIDTH,) * 4, embed_dims=WIDTH, channels=16,
                                 post_process_channels=POST, num_classes=CLASSES,
                                 readout_type=readout)
    ref = mmseg_peer.build_mmseg_model(cfg)
    torch.manual_seed(0)
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, SIZE))
    model = build_model(get_d2seg_cfg(YAML, NARROW + ["MODEL.DPT_HEAD.READOUT_TYPE", readout]))
    return ref, mmseg_peer.load_via_checkpointer(ref, model, tmp_path / "dpt.pth")


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("readout", ["project", "add", "ignore"])
def test_dpt_logits_match_mmseg(tmp_path, readout, dtype, rel):
    expected, got, head_expected, head, feats = logits_and_head_outputs(
        *_pair(tmp_path, readout), dtype, SIZE)
    assert expected.shape == (1, CLASSES, *SIZE)
    assert feats["vit0"].shape[-2:] == (5, 7) and feats["vit3_cls"].shape == (1, WIDTH)
    assert head.shape[-2:] == (48, 64)  # 3x4 doubled four times
    mmseg_peer.assert_close_to_scale(head, head_expected, rel, what="head")
    mmseg_peer.assert_close_to_scale(got, expected, rel)


def test_dpt_training_step_matches_mmseg(tmp_path):
    """The cross-entropy and every gradient in float64 (BN batch statistics, dropout off)."""
    assert_training_step_matches(*_pair(tmp_path), CLASSES)


def test_dpt_config_builds_mmseg_shapes(monkeypatch):
    assert_mmseg_shapes(YAML, "dpt/dpt_vit-b16_512x512_160k_ade20k",
                        ["MODEL.SEM_SEG_HEAD.NORM", "BN"], monkeypatch)


def test_dpt_head_init_equals_mmseg():
    """From scratch at DPT-B's widths: mmcv ConvModule's kaiming-normal (fan_out) convs, BN 1/0,
    torch's defaults for the transposed / stride-2 convs and the readout Linears, conv_seg
    N(0, 0.01) - as mmseg's init_weights."""
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models import build_head

    cfg = mmseg_peer.mmseg_config("_base_/models/dpt_vit-b16").model.decode_head
    mmseg_peer.syncbn_to_bn(cfg)
    ref = build_head(cfg)
    ref.init_weights()
    model = build_model(get_d2seg_cfg(YAML, ["MODEL.VIT.NUM_LAYERS", 4, "MODEL.VIT.OUT_INDICES",
                                             list(range(4)), "MODEL.SEM_SEG_HEAD.IN_FEATURES",
                                             OUTS, "MODEL.SEM_SEG_HEAD.NORM", "BN"]))
    assert_same_head_init(model, ref)
