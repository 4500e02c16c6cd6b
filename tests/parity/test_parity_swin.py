"""UPerNet-Swin (SwinTransformer + UPerHead + FCN auxiliary head): d2seg vs MMSegmentation 0.30
with the same (randomised) weights, at a narrow width (24; heads 1, 2, 3, 4): logits and
features at sizes that are multiples of neither 32 nor the window (padding in the patch
embedding, in every PatchMerging and in every block), in float32 and float64, one training
step's losses and gradients (every model read from an mmseg checkpoint file by SegCheckpointer),
and Swin-T's parameter names and shapes from mmseg's own Swin-T config."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import SegCheckpointer, convert_mmseg_state_dict
from test_checkpoint_formats import one_thread  # noqa: F401  (autouse: small inputs, 1 thread)

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

YAML = REPO_CONFIGS / "_base_/models/upernet_swin.yaml"
WIDTH, DEPTHS, HEADS = 24, [2, 2, 2, 2], [1, 2, 3, 4]
TINY = ["MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
        "MODEL.SWIN.EMBED_DIMS", WIDTH, "MODEL.SWIN.DEPTHS", DEPTHS, "MODEL.SWIN.NUM_HEADS", HEADS,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.AUX_HEAD.CONVS_DIM", 16]


def _tiny_mmseg_cfg(window=7, drop_path=0.3):
    cfg = mmseg_peer.mmseg_config("_base_/models/upernet_swin")
    cfg.model.backbone.update(embed_dims=WIDTH, depths=DEPTHS, num_heads=HEADS,
                              window_size=window, drop_path_rate=drop_path)
    cfg.model.decode_head.update(in_channels=[WIDTH * 2 ** i for i in range(4)], channels=32)
    cfg.model.auxiliary_head.update(in_channels=WIDTH * 4, channels=16)
    return cfg


def _pair(tmp_path, window=7, drop_path=0.3, size=(97, 131)):
    """mmseg's model (random weights, BN statistics calibrated on ``size`` images) and d2seg's,
    loaded from its mmseg 0.x checkpoint file by SegCheckpointer (detection, conversion, strict
    check)."""
    ref = mmseg_peer.build_mmseg_model(_tiny_mmseg_cfg(window, drop_path))
    torch.manual_seed(0)  # the calibration runs in training mode, with stochastic depth
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, size))
    path = tmp_path / "upernet_swin.pth"
    mmseg_peer.save_mmseg_checkpoint(ref, path)
    model = build_model(get_d2seg_cfg(YAML, TINY + ["MODEL.SWIN.WINDOW_SIZE", window,
                                                    "MODEL.SWIN.DROP_PATH_RATE", drop_path]))
    ckpt = SegCheckpointer(model)
    ckpt.load(str(path))
    report = ckpt.last_report
    assert not report.errors and not report.backbone_only and not report.aux_missing
    assert set(report.loaded) == set(model.state_dict())
    return ref, model.eval()


# swin1 and swin2 reach the loss only through UPerHead's 1x1 lateral conv and its training-mode
# BN, which removes any per-channel constant: their output LayerNorms' bias gradients are zero in
# theory (swin3 also feeds the auxiliary 3x3 conv, swin4 the PPM's 3x3 bottleneck: their zero
# padding makes a constant shift count)
THEORY_ZERO = {"backbone.norm0.bias", "backbone.norm1.bias"}


# window 7 at 97x131: stage maps 25x33 (padded to 28x35), 13x17, 7x9, 4x5 (one padded window);
# window 3 at 75x50: 19x13 ... 3x2, so every stage has several shifted windows and masks.
# In float64 the two agree to ~1e-12, so small departures (another LayerNorm eps, -inf instead
# of -100 in the shift mask, another padding) cannot hide under the float32 bound.
@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("window, size", [(7, (97, 131)), (3, (75, 50))])
def test_upernet_swin_logits_match_mmseg(tmp_path, window, size, dtype, rel):
    ref, model = _pair(tmp_path, window, size=size)
    img, expected, got = mmseg_peer.logits_in(ref, model, size, dtype)
    with torch.no_grad():
        ref_feats = ref.backbone(img)
        feats = model.backbone(img)
        aux_expected = ref.auxiliary_head(ref_feats)
        aux = model.auxiliary_heads[0](feats)[0]
    assert 0.1 < expected.abs().max() < 100  # the comparison is not of zeros
    assert expected.shape == (1, 19, *size)
    mmseg_peer.assert_close_to_scale(got, expected, rel)
    mmseg_peer.assert_close_to_scale(aux, aux_expected, rel, what="aux logits")
    for i, r in enumerate(ref_feats):
        mmseg_peer.assert_close_to_scale(feats[f"swin{i + 1}"], r, rel, what="features")


@pytest.mark.parametrize("strides", [[4, 2, 2, 2], [4, 1, 2, 2]])
def test_swin_backbone_matches_mmseg_patch_merging_strides(strides):
    """The backbone alone with a stride-1 PatchMerging (Unfold with overlap, mmseg's generic
    path) next to the usual stride 2 (a reshape in d2seg), window 5, patch norm off."""
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models.backbones import SwinTransformer as RefSwin

    ref = RefSwin(embed_dims=16, depths=[2, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=5,
                  strides=strides, patch_norm=False, out_indices=(1, 3))
    mmseg_peer.randomize_(ref)
    ref.eval()
    from d2seg.modeling.backbone.swin import SwinTransformer

    model = SwinTransformer(embed_dims=16, depths=[2, 1, 2, 1], num_heads=[1, 2, 2, 4],
                            window_size=5, strides=strides, patch_norm=False,
                            out_features=["swin2", "swin4"]).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert list(got) == ["swin2", "swin4"]
    for name, e in zip(got, expected):
        mmseg_peer.assert_close_to_scale(got[name], e, what="features")


def test_upernet_swin_training_step_matches_mmseg(tmp_path):
    """Both losses and every gradient of one training forward/backward (BN in training mode;
    dropout and stochastic depth at 0 on both sides: their random draws differ). In float64:
    in float32 the first blocks' gradients, back through 8 blocks and training-mode BNs, differ
    by rounding alone at ~1e-4 of their scale; in float64 a real difference stands out."""
    ref, model = _pair(tmp_path, drop_path=0.0)
    for m in (ref, model):
        m.double().train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
                mod.p = 0.0
    g = torch.Generator().manual_seed(0)
    imgs = mmseg_peer.calibration_images(2, (64, 64), seed=2).double()
    labels = torch.randint(0, 19, (2, 64, 64), generator=g)
    labels[torch.rand(2, 64, 64, generator=g) < 0.1] = 255
    meta = dict(img_shape=(64, 64, 3), ori_shape=(64, 64, 3), pad_shape=(64, 64, 3), flip=False)
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
    mmseg_peer.assert_same_gradients(ref_grads, {k: p.grad for k, p in model.named_parameters()},
                                     rel=1e-8, theory_zero=THEORY_ZERO, zero_rel=1e-12)


def test_swin_tiny_builds_mmseg_shapes():
    """Swin-T UPerNet (the base yaml as it is, 150 classes) has the parameter and buffer names
    and shapes of mmseg's upernet_swin_tiny_patch4_window7_512x512_160k_ade20k config."""
    ref = mmseg_peer.build_mmseg_model(mmseg_peer.mmseg_config(
        "swin/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K"))
    theirs = convert_mmseg_state_dict(
        {k: v.shape for k, v in ref.state_dict().items()}, is_resnet=False)
    model = build_model(get_d2seg_cfg(YAML, ["MODEL.SEM_SEG_HEAD.NORM", "BN",
                                             "MODEL.AUX_HEAD.NORM", "BN",
                                             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150]))
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours == theirs
    assert model.backbone.stages[3].blocks[1].ffn.dropout_layer.drop_prob == pytest.approx(0.3)
