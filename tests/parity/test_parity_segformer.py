"""SegFormer (MiT-B0 + SegformerHead): d2seg vs MMSegmentation 0.30 with the same (randomised)
weights: logits at a size that is not a multiple of 32, one training step's loss and gradients,
and B2's parameter names and shapes from mmseg's own B2 config."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from d2seg.checkpoint.convert import mmseg_layout
from test_checkpoint_formats import one_thread  # noqa: F401  (autouse: small inputs, 1 thread)

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

BN = ["MODEL.SEM_SEG_HEAD.NORM", "BN"]
YAML = REPO_CONFIGS / "_base_/models/segformer_mit-b0.yaml"
# mmseg's B2 (configs/segformer/segformer_mit-b2_*.py) on top of the B0 base model
# the last stage's final LayerNorm bias is a per-channel constant on mit4, which the head's 1x1
# conv keeps constant and its training-mode BN removes: its gradient is zero in theory
THEORY_ZERO = {"backbone.layers.3.2.bias"}
B2 = ["MODEL.MIT.EMBED_DIMS", 64, "MODEL.MIT.NUM_LAYERS", [3, 4, 6, 3]]


def _pair(mmseg_name="_base_/models/segformer_mit-b0", opts=()):
    ref = mmseg_peer.build_mmseg_model(mmseg_peer.mmseg_config(mmseg_name))
    torch.manual_seed(0)  # the calibration runs in training mode, with stochastic depth
    # calibrated BN statistics keep the reference logits O(1) (see mmseg_peer.calibrate_bn_)
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, (97, 131)))
    model = build_model(get_d2seg_cfg(YAML, BN + list(opts))).eval()
    sd = ref.state_dict()
    sd = convert_mmseg_state_dict(sd, **mmseg_layout(sd))
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    return ref, model


def test_segformer_b0_logits_match_mmseg():
    ref, model = _pair()
    img = mmseg_peer.calibration_images(1, (97, 131), seed=1)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
        ref_feats = ref.backbone(img)
        feats = model.backbone(img)
    assert 0.1 < expected.abs().max() < 100
    assert got.shape == expected.shape == (1, 19, 97, 131)
    mmseg_peer.assert_close_to_scale(got, expected)
    for i, r in enumerate(ref_feats):  # strides 4..32 of 97x131: 25x33, 13x17, 7x9, 4x5
        assert feats[f"mit{i + 1}"].shape == r.shape
        assert (feats[f"mit{i + 1}"] - r).abs().max() <= 1e-4 * max(1.0, r.abs().max().item())



def test_segformer_b0_float64_matches_mmseg_to_rounding():
    """In float64 the two agree to ~1e-12, so small departures (a LayerNorm eps of 1e-5 instead
    of mmseg's 1e-6 moves float32 logits by only ~2e-5) are caught."""
    ref, model = _pair()
    ref.double()
    model.double()
    img = mmseg_peer.calibration_images(1, (97, 131), seed=1).double()
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
    mmseg_peer.assert_close_to_scale(got, expected, rel=1e-10)


def test_segformer_b0_training_step_matches_mmseg():
    """Loss and every gradient of one training forward/backward (BN in training mode; dropout
    and stochastic depth at 0 on both sides: their random draws differ)."""
    ref, model = _pair(opts=["MODEL.MIT.DROP_PATH_RATE", 0.0])
    for m in (ref, model):
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.dropout._DropoutNd):
                mod.p = 0.0
            if hasattr(mod, "drop_prob"):  # mmcv's / d2seg's DropPath
                mod.drop_prob = 0.0
    g = torch.Generator().manual_seed(0)
    imgs = mmseg_peer.calibration_images(2, (64, 64), seed=2)
    labels = torch.randint(0, 19, (2, 64, 64), generator=g)
    labels[torch.rand(2, 64, 64, generator=g) < 0.1] = 255
    meta = dict(img_shape=(64, 64, 3), ori_shape=(64, 64, 3), pad_shape=(64, 64, 3), flip=False)
    ref_losses = ref.forward_train(imgs, [meta] * 2, labels[:, None])
    ref_loss = ref_losses["decode.loss_ce"]
    ref_loss.backward()
    losses = model.compute_losses(model.backbone(imgs), labels)
    assert set(losses) == {"loss_sem_seg"}
    losses["loss_sem_seg"].backward()
    assert abs(losses["loss_sem_seg"].item() - ref_loss.item()) <= 1e-5 * ref_loss.item()

    ref_grads = convert_mmseg_state_dict({k: p.grad for k, p in ref.named_parameters()},
                                         is_resnet=False)
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert set(grads) == set(ref_grads)
    largest = max(r.abs().max() for r in ref_grads.values())
    for k, r in ref_grads.items():
        if k in THEORY_ZERO:  # rounding noise on both sides
            assert max(r.abs().max(), grads[k].abs().max()) <= 1e-6 * largest, k
            continue
        scale = r.abs().max()
        assert scale > 1e-6 * largest, f"{k}: a vanishing gradient not listed in THEORY_ZERO"
        assert (grads[k] - r).abs().max() <= 1e-4 * scale, k


def test_segformer_b2_builds_mmseg_shapes():
    """B2 from its yaml overrides has mmseg's B2 parameter names and shapes."""
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models import build_segmentor

    cfg = mmseg_peer.mmseg_config("segformer/segformer_mit-b2_512x512_160k_ade20k")
    cfg.model.pretrained = None
    mmseg_peer.syncbn_to_bn(cfg.model)
    ref = build_segmentor(cfg.model)
    theirs = convert_mmseg_state_dict(
        {k: v.shape for k, v in ref.state_dict().items()}, is_resnet=False)
    model = build_model(get_d2seg_cfg(YAML, BN + B2 + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150]))
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours == theirs


@pytest.mark.parametrize("version", ["0.x", "1.x"])
def test_mmseg_segformer_checkpoint_loads_through_segcheckpointer(tmp_path, version):
    from d2seg.checkpoint import SegCheckpointer

    ref, _ = _pair()
    path = tmp_path / f"segformer_{version}.pth"
    mmseg_peer.save_mmseg_checkpoint(ref, path, version=version)
    model = build_model(get_d2seg_cfg(YAML, BN)).eval()
    ckpt = SegCheckpointer(model)
    ckpt.load(str(path))
    assert not ckpt.last_report.errors and not ckpt.last_report.backbone_only
    img = mmseg_peer.calibration_images(1, (64, 96), seed=3)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item())
