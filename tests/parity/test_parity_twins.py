"""Twins-PCPVT and Twins-SVT with UPerHead + FCN auxiliary head: d2seg vs MMSegmentation 0.30 with
the same (randomised) weights, at a narrow width (widths 16, 32, 48, 64; heads 1, 2, 3, 4; two
blocks per stage, so SVT has one LSA and one GSA layer in each): logits, auxiliary logits and
features at sizes that are multiples of neither 32 nor the LSA window (corner padding in every
patch embedding; LSA padding with both pads > 0 and with one pad 0, mmseg's mask bug), in float32
and float64; one training step's losses and gradients (every model read from an mmseg checkpoint
file by SegCheckpointer); and PCPVT-S / SVT-S parameter names and shapes from mmseg's configs."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import SegCheckpointer, convert_mmseg_state_dict
from test_checkpoint_formats import one_thread  # noqa: F401  (autouse: small inputs, 1 thread)

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

YAML = REPO_CONFIGS / "_base_/models/twins_pcpvt-s_upernet.yaml"
FPN_YAML = REPO_CONFIGS / "_base_/models/twins_pcpvt-s_fpn.yaml"
DIMS, HEADS, DEPTHS, MLP = [16, 32, 48, 64], [1, 2, 3, 4], [2, 2, 2, 2], [2, 2, 2, 2]
TINY = ["MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 19,
        "MODEL.TWINS.EMBED_DIMS", DIMS, "MODEL.TWINS.NUM_HEADS", HEADS,
        "MODEL.TWINS.DEPTHS", DEPTHS, "MODEL.TWINS.MLP_RATIOS", MLP,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.AUX_HEAD.CONVS_DIM", 16]


def _tiny_mmseg_cfg(svt, window, drop_path):
    cfg = mmseg_peer.mmseg_config("_base_/models/twins_pcpvt-s_upernet")
    cfg.model.backbone.update(embed_dims=DIMS, num_heads=HEADS, depths=DEPTHS, mlp_ratios=MLP,
                              drop_path_rate=drop_path)
    if svt:
        cfg.model.backbone.update(type="SVT", windiow_sizes=[window] * 4, norm_after_stage=True)
    cfg.model.decode_head.update(in_channels=DIMS, channels=32, num_classes=19)
    cfg.model.auxiliary_head.update(in_channels=DIMS[2], channels=16, num_classes=19)
    return cfg


def _pair(tmp_path, svt=False, window=7, drop_path=0.2, size=(97, 131)):
    """mmseg's model (random weights, BN statistics calibrated on ``size`` images) and d2seg's,
    loaded from its mmseg 0.x checkpoint file by SegCheckpointer (detection, conversion, strict
    check)."""
    ref = mmseg_peer.build_mmseg_model(_tiny_mmseg_cfg(svt, window, drop_path))
    torch.manual_seed(0)  # the calibration runs in training mode, with stochastic depth
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, size))
    path = tmp_path / "twins.pth"
    mmseg_peer.save_mmseg_checkpoint(ref, path)
    opts = TINY + ["MODEL.TWINS.DROP_PATH_RATE", drop_path]
    if svt:
        opts += ["MODEL.BACKBONE.NAME", "build_svt_backbone", "MODEL.TWINS.MLP_RATIOS", MLP,
                 "MODEL.TWINS.WINDOW_SIZES", [window] * 4, "MODEL.TWINS.NORM_AFTER_STAGE", True]
    model = build_model(get_d2seg_cfg(YAML, opts))
    ckpt = SegCheckpointer(model)
    ckpt.load(str(path))
    report = ckpt.last_report
    assert not report.errors and not report.backbone_only and not report.aux_missing
    assert set(report.loaded) == set(model.state_dict())
    return ref, model.eval()



# SVT, window 7 at 97x131: stage maps 25x33 (LSA pads 3 and 2: padded tokens masked), 13x17 (1
# and 4), 7x9 (pads 0 and 5: mmseg's bug, padded tokens unmasked), 4x5 (3 and 2); window 3 at
# 75x50: 19x13 (2, 2), 10x7 (2, 2), 5x4 (1, 2), 3x2 (0, 1: the bug again). In float64 the two
# agree to ~1e-12, so a departure (another mask, eps, padding) cannot hide under the bound.
@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("svt, window, size", [(False, 7, (97, 131)), (True, 7, (97, 131)),
                                               (True, 3, (75, 50))])
def test_upernet_twins_logits_match_mmseg(tmp_path, svt, window, size, dtype, rel):
    ref, model = _pair(tmp_path, svt, window, size=size)
    img, expected, got = mmseg_peer.logits_in(ref, model, size, dtype)
    with torch.no_grad():
        ref_feats = ref.backbone(img)
        feats = model.backbone(img)
        aux_expected = ref.auxiliary_head(ref_feats)
        aux = model.auxiliary_heads[0](feats)[0]
    assert 0.1 < expected.abs().max() < 1000  # the comparison is not of zeros
    assert expected.shape == (1, 19, *size)
    mmseg_peer.assert_close_to_scale(got, expected, rel)
    mmseg_peer.assert_close_to_scale(aux, aux_expected, rel, what="aux logits")
    for i, r in enumerate(ref_feats):
        mmseg_peer.assert_close_to_scale(feats[f"twins{i + 1}"], r, rel, what="features")


@pytest.mark.parametrize("svt", [False, True])
def test_upernet_twins_training_step_matches_mmseg(tmp_path, svt):
    """Both losses and every gradient of one training forward/backward (BN in training mode;
    dropout and stochastic depth at 0 on both sides: their random draws differ, and mmseg's
    double DropPath is a training-time draw only). In float64, at 62x75 (LSA window 7 pads)."""
    ref, model = _pair(tmp_path, svt, drop_path=0.0)
    for m in (ref, model):
        m.double().train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
                mod.p = 0.0
    g = torch.Generator().manual_seed(0)
    h, w = 62, 75
    imgs = mmseg_peer.calibration_images(2, (h, w), seed=2).double()
    labels = torch.randint(0, 19, (2, h, w), generator=g)
    labels[torch.rand(2, h, w, generator=g) < 0.1] = 255
    meta = dict(img_shape=(h, w, 3), ori_shape=(h, w, 3), pad_shape=(h, w, 3), flip=False)
    ref_losses = ref.forward_train(imgs, [meta] * 2, labels[:, None])
    (ref_losses["decode.loss_ce"] + ref_losses["aux.loss_ce"]).backward()
    losses = model.compute_losses(model.backbone(imgs), labels)
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    sum(losses.values()).backward()
    for ours, theirs in (("loss_sem_seg", "decode.loss_ce"), ("loss_aux", "aux.loss_ce")):
        assert abs(losses[ours].item() - ref_losses[theirs].item()) <= 1e-10 * ref_losses[
            theirs].item()

    ref_grads = convert_mmseg_state_dict({k: p.grad for k, p in ref.named_parameters()},
                                         is_resnet=False)
    grads = {k: p.grad for k, p in model.named_parameters()}
    # gradients that are zero in theory on both sides: only what reaches UPerHead's lateral 1x1
    # conv + training-mode BN (a per-channel constant cancels) -- found as those mmseg has ~0
    largest = max(r.abs().max() for r in ref_grads.values())
    theory_zero = {k for k, r in ref_grads.items() if r.abs().max() <= 1e-12 * largest}
    assert all(k.endswith("bias") for k in theory_zero), theory_zero
    mmseg_peer.assert_same_gradients(ref_grads, grads, rel=1e-8, theory_zero=theory_zero,
                                     zero_rel=1e-12)


@pytest.mark.parametrize("name, backbone", [
    ("twins/twins_pcpvt-s_uperhead_8x4_512x512_160k_ade20k", []),
    ("twins/twins_svt-s_uperhead_8x2_512x512_160k_ade20k",
     ["MODEL.BACKBONE.NAME", "build_svt_backbone", "MODEL.TWINS.EMBED_DIMS", [64, 128, 256, 512],
      "MODEL.TWINS.NUM_HEADS", [2, 4, 8, 16], "MODEL.TWINS.MLP_RATIOS", [4, 4, 4, 4],
      "MODEL.TWINS.DEPTHS", [2, 2, 10, 4], "MODEL.TWINS.NORM_AFTER_STAGE", True]),
])
def test_twins_small_builds_mmseg_shapes(name, backbone):
    """PCPVT-S / SVT-S UPerNet (the base yaml, SVT values from its comments) have the parameter
    and buffer names and shapes of mmseg's ADE20K configs."""
    ref = mmseg_peer.build_mmseg_model(mmseg_peer.mmseg_config(name))
    theirs = convert_mmseg_state_dict(
        {k: v.shape for k, v in ref.state_dict().items()}, is_resnet=False)
    model = build_model(get_d2seg_cfg(YAML, ["MODEL.SEM_SEG_HEAD.NORM", "BN",
                                             "MODEL.AUX_HEAD.NORM", "BN"] + backbone))
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours == theirs
    assert model.backbone.layers[3][-1].drop_path.drop_prob == pytest.approx(0.2)


@pytest.mark.skipif(not FPN_YAML.exists(), reason="no FPN base config")
def test_fpn_twins_logits_match_mmseg(tmp_path):
    """PCPVT -> FPN neck -> FPNHead (mmseg's twins_pcpvt-s_fpn base), narrow, at 97x131."""
    cfg = mmseg_peer.mmseg_config("_base_/models/twins_pcpvt-s_fpn")
    cfg.model.backbone.update(embed_dims=DIMS, num_heads=HEADS, depths=DEPTHS, mlp_ratios=MLP)
    cfg.model.neck.update(in_channels=DIMS, out_channels=24)
    cfg.model.decode_head.update(in_channels=[24] * 4, channels=16, num_classes=19)
    ref = mmseg_peer.build_mmseg_model(cfg)
    torch.manual_seed(0)
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, (97, 131)))
    path = tmp_path / "twins_fpn.pth"
    mmseg_peer.save_mmseg_checkpoint(ref, path)
    model = build_model(get_d2seg_cfg(FPN_YAML, TINY[:2] + TINY[4:-4] + [
        "MODEL.NECK.OUT_CHANNELS", 24, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16]))
    ckpt = SegCheckpointer(model)
    ckpt.load(str(path))
    assert not ckpt.last_report.errors and set(ckpt.last_report.loaded) == set(model.state_dict())
    model.eval()
    img = mmseg_peer.calibration_images(1, (97, 131), seed=1)
    with torch.no_grad():
        expected, got = ref.encode_decode(img, [{}]), model.encode_decode(img)
    assert 0.1 < expected.abs().max() < 1000
    mmseg_peer.assert_close_to_scale(got, expected)
