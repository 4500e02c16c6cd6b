"""UPerNet-ConvNeXt (mmcls's ConvNeXt + UPerHead + FCN auxiliary head): d2seg vs MMSegmentation
0.30 + mmcls 0.25 with the same (randomised) weights at narrow widths: logits, auxiliary logits
and features at an odd size (every stage floors), in float32 and float64; the backbone alone with
1x1-conv pointwise layers and a subset of outputs; one training step's losses, gradients and
AdamW update under mmseg's stage_wise LearningRateDecayOptimizerConstructor; ConvNeXt-T's
parameter names and shapes from mmseg's own config."""
import warnings

import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from d2seg.solver import build_optimizer
from test_checkpoint_formats import one_thread  # noqa: F401  (autouse: small inputs, 1 thread)

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")
mmseg_peer.stub_mmcv_ext()
pytest.importorskip("mmcls.models")  # registers mmcls.ConvNeXt (mmseg's custom_imports)

YAML = REPO_CONFIGS / "_base_/models/upernet_convnext.yaml"
DEPTHS, CHANNELS = [2, 2, 3, 2], [16, 24, 32, 40]
TINY = ["MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
        "MODEL.CONVNEXT.DEPTHS", DEPTHS, "MODEL.CONVNEXT.CHANNELS", CHANNELS,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.AUX_HEAD.CONVS_DIM", 16,
        "SOLVER.AMP.ENABLED", False]


def _tiny_mmseg_cfg(drop_path=0.4):
    cfg = mmseg_peer.mmseg_config("_base_/models/upernet_convnext")
    cfg.model.backbone.update(arch=dict(depths=DEPTHS, channels=CHANNELS),
                              drop_path_rate=drop_path)
    cfg.model.decode_head.update(in_channels=CHANNELS, channels=32)
    cfg.model.auxiliary_head.update(in_channels=CHANNELS[2], channels=16)
    return cfg


def _pair(tmp_path, drop_path=0.4, size=(97, 131), opts=()):
    """mmseg's model (random weights, gamma included; BN statistics calibrated on ``size``
    images) and d2seg's, loaded from its mmseg 0.x checkpoint file by SegCheckpointer."""
    ref = mmseg_peer.build_mmseg_model(_tiny_mmseg_cfg(drop_path))
    torch.manual_seed(0)  # the calibration runs in training mode, with stochastic depth
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, size))
    model = build_model(get_d2seg_cfg(YAML, TINY + ["MODEL.CONVNEXT.DROP_PATH_RATE", drop_path,
                                                    *opts]))
    return ref, mmseg_peer.load_via_checkpointer(ref, model, tmp_path / "upernet_convnext.pth")


_assert_close = mmseg_peer.assert_close_to_scale


# 97 x 131: 24 x 32, 12 x 16, 6 x 8, 3 x 4 (the stem and every downsample floor). In float64 the
# two agree to ~1e-12, so another LayerNorm eps (1e-5 vs 1e-6) cannot hide under the bound.
@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_upernet_convnext_logits_match_mmseg(tmp_path, dtype, rel):
    ref, model = _pair(tmp_path)
    ref.to(dtype)
    model.to(dtype)
    size = (97, 131)
    img = mmseg_peer.calibration_images(1, size, seed=1).to(dtype)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
        ref_feats = ref.backbone(img)
        feats = model.backbone(img)
        aux_expected = ref.auxiliary_head(ref_feats)
        aux = model.auxiliary_heads[0](feats)[0]
    assert 0.1 < expected.abs().max() < 100  # the comparison is not of zeros
    assert expected.shape == (1, 19, *size)
    assert ref_feats[0].shape[2:] == (24, 32)
    _assert_close(got, expected, rel)
    _assert_close(aux, aux_expected, rel, what="aux logits")
    for i, r in enumerate(ref_feats):
        _assert_close(feats[f"convnext{i + 1}"], r, rel, what="features")


def test_convnext_backbone_with_conv_pointwise_matches_mmcls():
    """The backbone alone: 1x1 convs for the pointwise layers, no layer scale, outputs 1 and 3
    only (mmcls builds norm1 / norm3), a 3x3 stem."""
    from mmcls.models.backbones import ConvNeXt as RefConvNeXt

    from d2seg.modeling.backbone.convnext import ConvNeXt

    kw = dict(linear_pw_conv=False, layer_scale_init_value=0.0)
    ref = RefConvNeXt(arch=dict(depths=DEPTHS, channels=CHANNELS), stem_patch_size=3,
                      out_indices=(1, 3), gap_before_final_norm=False, **kw)
    mmseg_peer.randomize_(ref)
    ref.eval()
    model = ConvNeXt(depths=DEPTHS, channels=CHANNELS, stem_patch_size=3,
                     out_features=["convnext2", "convnext4"], **kw).eval()
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 53, 77)
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert list(got) == ["convnext2", "convnext4"]
    assert model.output_shape()["convnext4"].stride == 24
    for name, e in zip(got, expected):
        _assert_close(got[name], e, what="features")


def _mmseg_optimizer(ref):
    from mmseg.core import build_optimizer as mmseg_build_optimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mmseg_build_optimizer(ref, dict(
            type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05,
            constructor="LearningRateDecayOptimizerConstructor",
            paramwise_cfg=dict(decay_rate=0.9, decay_type="stage_wise", num_layers=6)))


def test_upernet_convnext_training_step_matches_mmseg(tmp_path, monkeypatch):
    """Both losses and every gradient of one training forward/backward (BN in training mode;
    dropout and stochastic depth at 0 on both sides: their random draws differ), then one step
    of each side's AdamW with the base config's stage_wise LR decay (num_layers 6, rate 0.9):
    every parameter's lr / weight decay and its update equal mmseg's. In float64 (through 9
    blocks and training-mode BNs float32 rounding alone reaches ~1e-4 of the gradients)."""
    # mmcv's add_params asks whether mmcv._ext loads (DCN); mmseg_peer's stub has no __spec__
    monkeypatch.setattr("mmcv.runner.optimizer.default_constructor.check_ops_exist",
                        lambda: False)
    ref, model = _pair(tmp_path, drop_path=0.0)
    ref.double()
    model.double()
    g = torch.Generator().manual_seed(0)
    imgs = mmseg_peer.calibration_images(2, (67, 83), seed=2).double()
    labels = torch.randint(0, 19, (2, 67, 83), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.1] = 255
    ref_losses, losses = mmseg_peer.training_losses(ref, model, imgs, labels)
    pairs = [("loss_sem_seg", "decode.loss_ce"), ("loss_aux", "aux.loss_ce")]
    assert set(losses) == {k for k, _ in pairs}
    for ours, theirs in pairs:
        assert abs(losses[ours].item() - ref_losses[theirs].item()) <= 1e-10 * ref_losses[
            theirs].item()
    sum(losses.values()).backward()
    sum(ref_losses[k] for _, k in pairs).backward()
    ref_named = dict(ref.named_parameters())
    names = {convert_mmseg_state_dict({k: 0}, is_resnet=False).popitem()[0]: k
             for k in ref_named}
    ref_grads = {k: ref_named[names[k]].grad for k in names}
    mmseg_peer.assert_same_gradients(ref_grads, {k: p.grad for k, p in model.named_parameters()},
                                     rel=1e-8, theory_zero=THEORY_ZERO, zero_rel=1e-12)

    # one AdamW step with the LR decay of the base config (the same gradients on both sides)
    cfg = get_d2seg_cfg(YAML, TINY + ["SOLVER.MAX_ITER", 100, "SOLVER.WARMUP_ITERS", 0])
    opt, ref_opt = build_optimizer(cfg, model), _mmseg_optimizer(ref)
    settings = {p: (grp["lr"], grp["weight_decay"]) for grp in opt.param_groups
                for p in grp["params"]}
    ref_settings = {p: (grp["lr"], grp["weight_decay"]) for grp in ref_opt.param_groups
                    for p in grp["params"]}
    ours = dict(model.named_parameters())
    for k, p in ours.items():
        assert settings[p] == pytest.approx(ref_settings[ref_named[names[k]]], rel=1e-12), k
    scales = {round(lr / 1e-4, 3) for lr, _ in settings.values()}
    assert scales == {0.478, 0.531, 0.59, 0.656, 0.729, 1.0}  # 0.9 ** (7 .. 0)
    before = {k: p.detach().clone() for k, p in ours.items()}
    opt.step()
    ref_opt.step()
    deltas = {k: (p.detach() - before[k], ref_named[names[k]].detach() - before[k])
              for k, p in ours.items()}
    largest = max(d_ref.abs().max() for _, d_ref in deltas.values())
    for k, (d, d_ref) in deltas.items():
        if k in THEORY_ZERO:  # AdamW's step on rounding-noise gradients: noise below eps
            assert max(d.abs().max(), d_ref.abs().max()) <= 1e-6 * largest, k
            continue
        assert (d - d_ref).abs().max() <= 1e-9 * d_ref.abs().max().clamp(min=1e-30), k


# convnext1 and convnext2 reach the loss only through UPerHead's 1x1 lateral conv and its
# training-mode BN, which removes any per-channel constant: their output LayerNorms' bias
# gradients are zero in theory (convnext3 also feeds the auxiliary 3x3 conv, convnext4 the PPM's
# 3x3 bottleneck: their zero padding makes a constant shift count)
THEORY_ZERO = {"backbone.norm0.bias", "backbone.norm1.bias"}


def test_convnext_tiny_builds_mmseg_shapes():
    """ConvNeXt-T UPerNet (the base yaml as it is, 150 classes) has the parameter and buffer
    names and shapes of mmseg's upernet_convnext_tiny_fp16_512x512_160k_ade20k config."""
    from mmseg.models import build_segmentor

    cfg = mmseg_peer.mmseg_config("convnext/upernet_convnext_tiny_fp16_512x512_160k_ade20k")
    cfg.model.backbone.pop("init_cfg", None)
    mmseg_peer.syncbn_to_bn(cfg.model)
    ref = build_segmentor(cfg.model)
    theirs = convert_mmseg_state_dict(
        {k: v.shape for k, v in ref.state_dict().items()}, is_resnet=False)
    model = build_model(get_d2seg_cfg(YAML, ["MODEL.SEM_SEG_HEAD.NORM", "BN",
                                             "MODEL.AUX_HEAD.NORM", "BN",
                                             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150]))
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours == theirs
    assert model.backbone.stages[3][2].drop_path.drop_prob == pytest.approx(0.4)
    assert model.backbone.stages[0][0].gamma[0].item() == 1.0
