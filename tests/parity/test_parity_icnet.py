"""ICNet (ResNetV1c-D8 + input cascade + PPM) with ICNeck, an FCN decode head and two FCN
auxiliary heads: d2seg vs MMSegmentation 0.30 with the same (randomised, BN-calibrated) weights,
loaded from an mmseg-format checkpoint file through SegCheckpointer. Narrow R-18 and R-50: logits,
the backbone's and the neck's outputs at an odd size (the ceil-mode pool and the scale-0.5
resizes give odd grids), and in training mode the decode and auxiliary losses and every
gradient."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import SegCheckpointer
from d2seg.checkpoint.convert import mmseg_layout
from d2seg.checkpoint.mmseg import convert_mmseg_key
from test_parity_realtime import _assert_close

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

MMSEG_CONFIG = "icnet/icnet_r50-d8_832x832_80k_cityscapes"
SIZE = (103, 135)  # stem 26x34: the ceil-mode pool gives 14x18 (floor: 13x17); sub2 7x9, sub4 4x5
BN = [f"MODEL.{node}.NORM" for node in ("RESNETS", "ICNET", "NECK.ICNECK", "SEM_SEG_HEAD",
                                        "AUX_HEAD", "AUX_HEAD_2")]
# narrow widths: stem / base 16 (mmseg's stem_channels / base_channels), PSP 32, light branch 8,
# outputs (16, 32, 32), neck and heads 32
NARROW = ["MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.WIDTH_PER_GROUP", 16,
          "MODEL.ICNET.PSP_OUT_CHANNELS", 32, "MODEL.ICNET.LIGHT_BRANCH_MIDDLE_CHANNELS", 8,
          "MODEL.ICNET.OUT_CHANNELS", [16, 32, 32], "MODEL.NECK.OUT_CHANNELS", 32,
          "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.AUX_HEAD.CONVS_DIM", 32,
          "MODEL.AUX_HEAD_2.CONVS_DIM", 32]
VARIANTS = {  # depth: (d2seg RES2_OUT_CHANNELS, ICNet layer_channels)
    18: (16, (32, 128)),
    50: (64, (128, 512)),
}


def _pair(depth, tmp_path):
    res2, layer_channels = VARIANTS[depth]
    cfg = mmseg_peer.mmseg_config(MMSEG_CONFIG)
    bb = cfg.model.backbone
    bb.backbone_cfg.update(depth=depth, stem_channels=16, base_channels=16)
    bb.update(layer_channels=layer_channels, light_branch_middle_channels=8,
              psp_out_channels=32, out_channels=(16, 32, 32))
    cfg.model.neck.update(in_channels=(16, 32, 32), out_channels=32)
    for head in [cfg.model.decode_head, *cfg.model.auxiliary_head]:
        head.update(in_channels=32, channels=32)
    ref = mmseg_peer.build_mmseg_model(cfg)
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, SIZE))
    path = str(tmp_path / "mmseg.pth")
    torch.save({"meta": {}, "state_dict": ref.state_dict()}, path)
    opts = [x for k in BN for x in (k, "BN")] + NARROW + [
        "MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.RES2_OUT_CHANNELS", res2,
        "MODEL.ICNET.LAYER_CHANNELS", list(layer_channels)]
    model = build_model(get_d2seg_cfg(REPO_CONFIGS / "_base_/models/icnet_r50-d8.yaml", opts))
    ckpt = SegCheckpointer(model)
    ckpt.load(path)
    assert not ckpt.last_report.errors and not ckpt.last_report.aux_missing
    return ref, model.eval()


@pytest.mark.parametrize("depth", list(VARIANTS))
@torch.no_grad()
def test_icnet_matches_mmseg(depth, tmp_path):
    ref, model = _pair(depth, tmp_path)
    img = mmseg_peer.calibration_images(1, SIZE, seed=1)
    _assert_close(model.encode_decode(img), ref.encode_decode(img, [{}]))
    feats, ref_feats = model.backbone(img), ref.backbone(img)
    for name, r in zip(("sub1", "sub2", "sub4"), ref_feats):
        _assert_close(feats[name], r)
    neck, ref_neck = model.neck(feats), ref.neck(ref_feats)
    for name, r in zip(("x_24", "x_12", "cff_12"), ref_neck):
        _assert_close(neck[name], r)
    for head, ref_head in zip(model.auxiliary_heads, ref.auxiliary_head):
        _assert_close(head(neck)[0], ref_head(ref_neck))


@pytest.mark.parametrize("depth", list(VARIANTS))
def test_icnet_training_step_matches_mmseg(depth, tmp_path):
    """BN in training mode, dropout off: decode and both auxiliary cross-entropies, then every
    parameter's gradient of their sum."""
    ref, model = _pair(depth, tmp_path)
    g = torch.Generator().manual_seed(2)
    img = mmseg_peer.calibration_images(2, (97, 131), seed=3)
    label = torch.randint(0, 19, (2, 97, 131), generator=g)
    label[torch.rand(label.shape, generator=g) < 0.1] = 255
    expected, got = mmseg_peer.training_losses(ref, model, img, label)
    pairs = [("loss_sem_seg", "decode.loss_ce"), ("loss_aux", "aux_0.loss_ce"),
             ("loss_aux_2", "aux_1.loss_ce")]
    assert set(got) == {k for k, _ in pairs}
    for ours, theirs in pairs:
        assert abs(got[ours].item() - expected[theirs].item()) <= 1e-5 * expected[theirs].item()
    sum(got.values()).backward()
    sum(expected[k] for _, k in pairs).backward()
    ref_sd = ref.state_dict()
    layout = mmseg_layout(ref_sd)
    ref_grads = {convert_mmseg_key(k, **layout): p.grad for k, p in ref.named_parameters()}
    mmseg_peer.assert_same_gradients(ref_grads, {k: p.grad for k, p in model.named_parameters()})
