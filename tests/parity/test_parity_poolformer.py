"""FPN-PoolFormer (mmcls 0.25 PoolFormer + mmseg's FPN neck + FPNHead): d2seg vs MMSegmentation
0.30 with the same (randomised) weights, on a narrow version of mmseg's own
fpn_poolformer_s12 config: logits at an odd size, float64 agreement, one training step's loss and
gradients, S12's parameter names and shapes, and a whole mmseg checkpoint through
SegCheckpointer."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from d2seg.checkpoint.convert import mmseg_layout
from test_checkpoint_formats import one_thread  # noqa: F401  (autouse: small inputs, 1 thread)

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")
pytest.importorskip("mmcls")

YAML = REPO_CONFIGS / "_base_/models/fpn_poolformer_s12.yaml"
MMSEG_CFG = "poolformer/fpn_poolformer_s12_8x4_512x512_40k_ade20k"
# narrow: widths 8/16/24/32, 2 blocks in stage 1 (drop-path schedule), FPN 16, head 8, 5 classes
LAYERS, DIMS = [2, 1, 2, 1], [8, 16, 24, 32]
NARROW = ["MODEL.POOLFORMER.ARCH", "", "MODEL.POOLFORMER.LAYERS", LAYERS,
          "MODEL.POOLFORMER.EMBED_DIMS", DIMS, "MODEL.NECK.OUT_CHANNELS", 16,
          "MODEL.SEM_SEG_HEAD.CONVS_DIM", 8, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5,
          "MODEL.SEM_SEG_HEAD.NORM", "BN"]
SIZE = (97, 131)  # not a multiple of 32: 24x33, 12x17, 6x9, 3x5 at strides 4..32


def _mmseg_cfg(narrow=True):
    cfg = mmseg_peer.mmseg_config(MMSEG_CFG)
    if narrow:
        cfg.model.backbone.arch = dict(layers=LAYERS, embed_dims=DIMS, mlp_ratios=[4] * 4,
                                       layer_scale_init_value=1e-5)
        cfg.model.neck.in_channels = DIMS
        cfg.model.neck.out_channels = 16
        cfg.model.decode_head.in_channels = [16] * 4
        cfg.model.decode_head.channels = 8
        cfg.model.decode_head.num_classes = 5
    return cfg


def _pair(opts=()):
    ref = mmseg_peer.build_mmseg_model(_mmseg_cfg())
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, SIZE))
    model = build_model(get_d2seg_cfg(YAML, NARROW + list(opts))).eval()
    sd = ref.state_dict()
    sd = convert_mmseg_state_dict(sd, **mmseg_layout(sd))
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    return ref, model


def test_fpn_poolformer_logits_match_mmseg():
    ref, model = _pair()
    img = mmseg_peer.calibration_images(1, SIZE, seed=1)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
        ref_feats = ref.neck(ref.backbone(img))
        feats = model.extract_feat(img)
    assert 0.1 < expected.abs().max() < 100
    assert got.shape == expected.shape == (1, 5, *SIZE)
    mmseg_peer.assert_close_to_scale(got, expected)
    assert len(ref_feats) == len(feats) == 4
    for i, r in enumerate(ref_feats):
        assert feats[f"fpn{i}"].shape == r.shape
        assert (feats[f"fpn{i}"] - r).abs().max() <= 1e-4 * max(1.0, r.abs().max().item())


def test_fpn_poolformer_float64_matches_mmseg_to_rounding():
    """In float64 the two agree to ~1e-12, so small departures (a GroupNorm eps, the pooling's
    count_include_pad) that float32 tolerances could hide are caught."""
    ref, model = _pair()
    ref.double()
    model.double()
    img = mmseg_peer.calibration_images(1, SIZE, seed=1).double()
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
    mmseg_peer.assert_close_to_scale(got, expected, rel=1e-10)


def test_fpn_poolformer_training_step_matches_mmseg():
    """Loss and every gradient of one training forward/backward (BN in training mode, dropout
    off); mmseg's frozen_stages=0 freezes patch_embed on both sides."""
    ref, model = _pair()
    g = torch.Generator().manual_seed(0)
    imgs = mmseg_peer.calibration_images(2, (67, 93), seed=2)
    labels = torch.randint(0, 5, (2, 67, 93), generator=g)
    labels[torch.rand(2, 67, 93, generator=g) < 0.1] = 255
    for m in (ref, model):
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout2d):
                mod.eval()
    ref_loss = ref.forward_train(imgs, [{}] * 2, labels[:, None])["decode.loss_ce"]
    losses = model.compute_losses(model.extract_feat(imgs), labels)
    assert set(losses) == {"loss_sem_seg"}
    loss = losses["loss_sem_seg"]
    assert abs(loss.item() - ref_loss.item()) <= 1e-5 * ref_loss.item()
    ref_loss.backward()
    loss.backward()
    ref_grads = convert_mmseg_state_dict(
        {k: p.grad for k, p in ref.named_parameters() if p.requires_grad}, is_resnet=False)
    grads = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
    assert not any(k.startswith("backbone.patch_embed.") for k in grads)  # frozen
    # a per-channel constant passes the token mixer as pool(c) - c = 0 (padding not counted),
    # so every block's norm1 bias has a zero gradient in theory
    theory_zero = {k for k in grads if k.endswith(".norm1.bias")}
    assert len(theory_zero) == sum(LAYERS)
    mmseg_peer.assert_same_gradients(ref_grads, grads, theory_zero=theory_zero)


def test_poolformer_s12_builds_mmseg_shapes():
    """The base yaml (S12, 150 classes) has the parameter names and shapes of mmseg's S12 ADE
    config, and the same number of parameters (15.7 M)."""
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models import build_segmentor

    cfg = _mmseg_cfg(narrow=False)
    cfg.model.pretrained = None
    cfg.model.backbone.pop("init_cfg", None)
    mmseg_peer.syncbn_to_bn(cfg.model)
    ref = build_segmentor(cfg.model)
    theirs = convert_mmseg_state_dict({k: v.shape for k, v in ref.state_dict().items()},
                                      is_resnet=False)
    model = build_model(get_d2seg_cfg(YAML, ["MODEL.SEM_SEG_HEAD.NORM", "BN",
                                             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150]))
    assert {k: v.shape for k, v in model.state_dict().items()} == theirs


def test_mmseg_poolformer_checkpoint_loads_through_segcheckpointer(tmp_path):
    from d2seg.checkpoint import SegCheckpointer

    ref, _ = _pair()
    path = tmp_path / "fpn_poolformer.pth"
    mmseg_peer.save_mmseg_checkpoint(ref, path)
    model = build_model(get_d2seg_cfg(YAML, NARROW)).eval()
    ckpt = SegCheckpointer(model)
    ckpt.load(str(path))
    assert not ckpt.last_report.errors and not ckpt.last_report.backbone_only
    img = mmseg_peer.calibration_images(1, (64, 96), seed=3)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item())
