"""BEiT- and MAE-UPerNet (backbone + Feature2Pyramid + UPerHead + FCN auxiliary head): d2seg vs
MMSegmentation 0.30 with the same (randomised) weights, narrow (embed 32, 4 layers, 2 heads,
window from IMG_SIZE 64 x 64 or 64 x 80): logits, features and auxiliary logits at inputs that
are not multiples of the patch size (the patch embedding drops the remainder, as mmseg), in
float32 and float64; for BEiT, one training step's losses and gradients and one AdamW step
with mmseg's LayerDecayOptimizerConstructor (every model read from an mmseg checkpoint file by
SegCheckpointer)."""
import warnings

import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import SegCheckpointer, convert_mmseg_state_dict
from d2seg.solver import build_optimizer
from test_checkpoint_formats import one_thread  # noqa: F401  (autouse: small inputs, 1 thread)

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

WIDTH, LAYERS, HEADS = 32, 4, 2
FAMILIES = {"beit": "BEiT", "mae": "MAE"}


def _tiny_mmseg_cfg(family, img_size, drop_path):
    cfg = mmseg_peer.mmseg_config(f"_base_/models/upernet_{family}")
    cfg.model.backbone.update(img_size=img_size, embed_dims=WIDTH, num_layers=LAYERS,
                              num_heads=HEADS, out_indices=(0, 1, 2, 3), init_values=0.1,
                              drop_path_rate=drop_path)
    cfg.model.neck.update(embed_dim=WIDTH)
    cfg.model.decode_head.update(in_channels=[WIDTH] * 4, channels=32, num_classes=150)
    cfg.model.auxiliary_head.update(in_channels=WIDTH, channels=16, num_classes=150)
    return cfg


def _tiny_d2seg_cfg(family, img_size, drop_path, opts=()):
    return get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/upernet_{family}.yaml", [
        "MODEL.BEIT.EMBED_DIMS", WIDTH, "MODEL.BEIT.NUM_LAYERS", LAYERS,
        "MODEL.BEIT.NUM_HEADS", HEADS, "MODEL.BEIT.OUT_INDICES", [0, 1, 2, 3],
        "MODEL.BEIT.IMG_SIZE", list(img_size), "MODEL.BEIT.INIT_VALUES", 0.1,
        "MODEL.BEIT.DROP_PATH_RATE", drop_path,
        "MODEL.NECK.IN_FEATURES", [f"{family}{i}" for i in range(4)], "MODEL.NECK.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.AUX_HEAD.CONVS_DIM", 16, *opts])


def _pair(tmp_path, family, img_size=(64, 64), size=(70, 75), drop_path=0.1, opts=()):
    """mmseg's model (random weights, BN statistics calibrated on ``size`` images) and d2seg's,
    loaded from its mmseg 0.x checkpoint file by SegCheckpointer (strict: every key)."""
    ref = mmseg_peer.build_mmseg_model(_tiny_mmseg_cfg(family, img_size, drop_path))
    torch.manual_seed(0)  # the calibration runs in training mode, with stochastic depth
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, size))
    path = tmp_path / f"upernet_{family}.pth"
    mmseg_peer.save_mmseg_checkpoint(ref, path)
    cfg = _tiny_d2seg_cfg(family, img_size, drop_path, opts)
    model = build_model(cfg)
    assert type(model.backbone).__name__ == FAMILIES[family]
    ckpt = SegCheckpointer(model)
    ckpt.load(str(path))
    report = ckpt.last_report
    assert not report.errors and not report.backbone_only and not report.aux_missing
    assert set(report.loaded) == set(model.state_dict())
    return ref, model.eval(), cfg



# 70 x 75 -> a 4 x 4 patch grid (window of IMG_SIZE 64), 75 x 93 -> 4 x 5 (IMG_SIZE 64 x 80, a
# non-square window: its relative position index); float64 makes a small departure (another
# LayerNorm eps, k bias, index layout) stand out of rounding
@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("img_size, size", [((64, 64), (70, 75)), ((64, 80), (75, 93))])
@pytest.mark.parametrize("family", ["beit", "mae"])
def test_upernet_beit_mae_logits_match_mmseg(tmp_path, family, img_size, size, dtype, rel):
    ref, model, _ = _pair(tmp_path, family, img_size, size)
    img, expected, got = mmseg_peer.logits_in(ref, model, size, dtype)
    with torch.no_grad():
        ref_feats = ref.backbone(img)
        feats = model.backbone(img)
        ref_pyr = ref.neck(ref_feats)
        pyr = model.neck(feats)
        aux_expected = ref.auxiliary_head(ref_pyr)
        aux = model.auxiliary_heads[0](pyr)[0]
    assert 0.1 < expected.abs().max() < 100  # the comparison is not of zeros
    assert expected.shape == (1, 150, *size)
    mmseg_peer.assert_close_to_scale(got, expected, rel)
    mmseg_peer.assert_close_to_scale(aux, aux_expected, rel, what="aux logits")
    for i, r in enumerate(ref_feats):
        mmseg_peer.assert_close_to_scale(feats[f"{family}{i}"], r, rel, what="features")
    for i, r in enumerate(ref_pyr):
        mmseg_peer.assert_close_to_scale(pyr[f"pyramid{i + 1}"], r, rel, what="neck")


# pyramid1 and pyramid2 reach the loss only through UPerHead's 1x1 lateral conv and its
# training-mode BN, and upsample_4x.0 feeds a training-mode BN: a per-channel constant is removed,
# so these biases' gradients are zero in theory (rounding noise here)
THEORY_ZERO = {"neck.upsample_4x.0.bias", "neck.upsample_4x.3.bias", "neck.upsample_2x.0.bias"}


def test_upernet_beit_training_step_and_layer_decay_adamw_match_mmseg(tmp_path):
    """Both losses and every gradient of one training forward/backward (float64, BN in training
    mode, dropout and stochastic depth at 0: their draws differ), then one AdamW step with
    mmseg's LayerDecayOptimizerConstructor (num_layers 4, rate 0.9) on both sides: every
    parameter moves the same way (per-layer lr, no decay on 1-D tensors and biases)."""
    mmseg_peer.stub_mmcv_ext()
    ref, model, cfg = _pair(tmp_path, "beit", drop_path=0.0, size=(64, 64),
                            opts=["SOLVER.LR_DECAY.NUM_LAYERS", LAYERS, "SOLVER.BASE_LR", 1e-3,
                                  "SOLVER.WARMUP_ITERS", 0])
    ref.double()
    model.double()
    g = torch.Generator().manual_seed(0)
    imgs = mmseg_peer.calibration_images(2, (64, 64), seed=2).double()
    labels = torch.randint(0, 150, (2, 64, 64), generator=g)
    labels[torch.rand(2, 64, 64, generator=g) < 0.1] = 255
    # training mode, the heads' Dropout2d off (the backbone's dropouts are 0 as in mmseg)
    ref_losses, losses = mmseg_peer.training_losses(ref, model, imgs, labels)
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    (ref_losses["decode.loss_ce"] + ref_losses["aux.loss_ce"]).backward()
    sum(losses.values()).backward()
    for ours, theirs in (("loss_sem_seg", "decode.loss_ce"), ("loss_aux", "aux.loss_ce")):
        assert losses[ours].item() == pytest.approx(ref_losses[theirs].item(), rel=1e-10)
    ref_grads = convert_mmseg_state_dict({k: p.grad for k, p in ref.named_parameters()},
                                         is_resnet=False)
    grads = {k: p.grad for k, p in model.named_parameters()}
    mmseg_peer.assert_same_gradients(ref_grads, grads, rel=1e-8, theory_zero=THEORY_ZERO,
                                     zero_rel=1e-12)

    from mmseg.core import build_optimizer as mmseg_build_optimizer

    with warnings.catch_warnings():  # LayerDecayOptimizerConstructor's deprecation warning
        warnings.simplefilter("ignore")
        ref_opt = mmseg_build_optimizer(ref, dict(
            type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05,
            constructor="LayerDecayOptimizerConstructor",
            paramwise_cfg=dict(num_layers=LAYERS, layer_decay_rate=0.9)))
    opt = build_optimizer(cfg, model)
    ref_params = convert_mmseg_state_dict(dict(ref.named_parameters()), is_resnet=False)
    params = dict(model.named_parameters())
    ref_lr = {p: grp["lr"] for grp in ref_opt.param_groups for p in grp["params"]}
    lr = {p: grp["lr"] for grp in opt.param_groups for p in grp["params"]}
    for k in ("backbone.cls_token", "backbone.layers.0.gamma_1", "neck.upsample_4x.0.weight"):
        assert lr[params[k]] == pytest.approx(ref_lr[ref_params[k]])
    assert lr[params["backbone.cls_token"]] == pytest.approx(1e-3 * 0.9 ** (LAYERS + 1))
    for k in THEORY_ZERO:  # Adam would turn their (different) rounding noise into lr-sized steps
        params[k].grad.zero_()
        ref_params[k].grad.zero_()
    before = {k: p.detach().clone() for k, p in params.items()}
    ref_opt.step()
    opt.step()
    moved = 0
    for k, p in params.items():
        mmseg_peer.assert_close_to_scale(p.detach(), ref_params[k].detach(), rel=1e-10,
                                         what="parameters")
        moved += not torch.equal(p.detach(), before[k])
    assert moved == len(params) - len(THEORY_ZERO)
