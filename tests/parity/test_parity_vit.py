"""UPerNet-ViT (VisionTransformer + MultiLevelNeck + UPerHead + FCN auxiliary head) and the
DeiT configs without a neck: d2seg vs MMSegmentation 0.30 with the same (randomised) weights,
read from an mmseg checkpoint file by SegCheckpointer, at a narrow width (embed 32, 4 layers, 2
heads, pos_embed grid 4x4 for img_size 64): logits and features at 65x97 (the patch embedding
pads to 80x112, the 5x7 grid differs from pos_embed's, which is resized bicubically; the neck
resizes 5x7 by 4, 2 and 0.5), in float32 and float64; one training step's losses, gradients
and AdamW update with the ViT configs' custom_keys (tokens without weight decay); and
ViT-B's / DeiT-S's parameter names and shapes from mmseg's own configs."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from test_checkpoint_formats import one_thread  # noqa: F401  (autouse: small inputs, 1 thread)

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

YAML = REPO_CONFIGS / "_base_/models/upernet_vit-b16_mln.yaml"
WIDTH, LAYERS, HEADS, IMG = 32, 4, 2, 64
OUTS = [f"vit{i}" for i in range(LAYERS)]
NARROW = ["MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
          "MODEL.VIT.EMBED_DIMS", WIDTH, "MODEL.VIT.NUM_LAYERS", LAYERS,
          "MODEL.VIT.NUM_HEADS", HEADS, "MODEL.VIT.IMG_SIZE", [IMG, IMG],
          "MODEL.VIT.OUT_INDICES", list(range(LAYERS)), "MODEL.NECK.IN_FEATURES", OUTS,
          "MODEL.NECK.OUT_CHANNELS", WIDTH,
          "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.AUX_HEAD.CONVS_DIM", 16]
# the plain deit configs: neck=None, the heads on the four 1/16 maps
NO_NECK = ["MODEL.NECK.NAME", "", "MODEL.SEM_SEG_HEAD.IN_FEATURES", OUTS,
           "MODEL.AUX_HEAD.IN_FEATURES", OUTS[-1:]]
SIZE = (65, 97)
# mln0..mln2 reach the loss only through UPerHead's 1x1 lateral convs and their training-mode
# BN, which removes a per-channel constant: the biases of the neck's 3x3 convs making them get a
# zero gradient in theory (mln3 also feeds the PPM's and the auxiliary head's zero-padded 3x3)
THEORY_ZERO = {f"neck.convs.{i}.bias" for i in range(3)}


def _mmseg_cfg(neck=True, final_norm=False, drop_path=0.0):
    cfg = mmseg_peer.mmseg_config("_base_/models/upernet_vit-b16_ln_mln")
    cfg.model.backbone.update(embed_dims=WIDTH, num_layers=LAYERS, num_heads=HEADS,
                              img_size=(IMG, IMG), out_indices=tuple(range(LAYERS)),
                              final_norm=final_norm, drop_path_rate=drop_path)
    if neck:
        cfg.model.neck.update(in_channels=[WIDTH] * 4, out_channels=WIDTH)
    else:
        cfg.model.neck = None
    cfg.model.decode_head.update(in_channels=[WIDTH] * 4, channels=32)
    cfg.model.auxiliary_head.update(in_channels=WIDTH, channels=16)
    return cfg


def _pair(tmp_path, neck=True, final_norm=False, drop_path=0.0):
    """mmseg's model (random weights, BN statistics calibrated at SIZE) and d2seg's, loaded from
    its mmseg 0.x checkpoint file by SegCheckpointer (detection, conversion, strict check)."""
    ref = mmseg_peer.build_mmseg_model(_mmseg_cfg(neck, final_norm, drop_path))
    torch.manual_seed(0)
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, SIZE))
    opts = NARROW + ["MODEL.VIT.FINAL_NORM", final_norm, "MODEL.VIT.DROP_PATH_RATE", drop_path]
    model = build_model(get_d2seg_cfg(YAML, opts + ([] if neck else NO_NECK)))
    return ref, mmseg_peer.load_via_checkpointer(ref, model, tmp_path / "upernet_vit.pth")


_assert_close = mmseg_peer.assert_close_to_scale


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("neck, final_norm", [(True, False), (True, True), (False, False)])
def test_upernet_vit_logits_match_mmseg(tmp_path, neck, final_norm, dtype, rel):
    ref, model = _pair(tmp_path, neck, final_norm)
    img, expected, got = mmseg_peer.logits_in(ref, model, SIZE, dtype)
    with torch.no_grad():
        ref_feats = ref.extract_feat(img)
        feats = model.extract_feat(img)
        ref_backbone = ref.backbone(img)
        backbone = model.backbone(img)
        aux_expected = ref.auxiliary_head(ref_feats)
    assert 0.1 < expected.abs().max() < 100  # the comparison is not of zeros
    assert expected.shape == (1, 19, *SIZE)
    _assert_close(got, expected, rel)
    for i, r in enumerate(ref_backbone):
        assert r.shape[-2:] == (5, 7)
        _assert_close(backbone[f"vit{i}"], r, rel, what="features")
    names = [f"mln{i}" for i in range(4)] if neck else OUTS
    for name, r in zip(names, ref_feats):
        _assert_close(feats[name], r, rel, what="neck")
    if not neck:  # four 1/16 maps: UPerHead's output before the resize to the input is 5x7
        assert feats["vit3"].shape[-2:] == (5, 7)
    with torch.no_grad():
        aux = model.auxiliary_heads[0](feats)[0]
    _assert_close(aux, aux_expected, rel, what="aux logits")


def test_upernet_vit_training_step_matches_mmseg(tmp_path, monkeypatch):
    """Both losses, every gradient and one AdamW step with the ViT configs' paramwise_cfg
    (custom_keys pos_embed / cls_token / norm at decay_mult 0: only the two tokens hit, the LNs
    are ln1/ln2) - in float64, BN in training mode, dropout and stochastic depth off."""
    from mmseg.core import build_optimizer as mmseg_build_optimizer

    from d2seg.solver import build_optimizer

    # mmcv's add_params asks whether mmcv._ext loads (DCN); mmseg_peer's stub has no __spec__
    monkeypatch.setattr("mmcv.runner.optimizer.default_constructor.check_ops_exist",
                        lambda: False)
    ref, model = _pair(tmp_path, final_norm=True)
    ref.double()
    model.double()
    g = torch.Generator().manual_seed(0)
    imgs = mmseg_peer.calibration_images(2, (64, 80), seed=2).double()
    labels = torch.randint(0, 19, (2, 64, 80), generator=g)
    labels[torch.rand(2, 64, 80, generator=g) < 0.1] = 255
    ref_losses, losses = mmseg_peer.training_losses(ref, model, imgs, labels)
    (ref_losses["decode.loss_ce"] + ref_losses["aux.loss_ce"]).backward()
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    sum(losses.values()).backward()
    for ours, theirs in (("loss_sem_seg", "decode.loss_ce"), ("loss_aux", "aux.loss_ce")):
        assert abs(losses[ours].item() - ref_losses[theirs].item()) <= 1e-10 * ref_losses[
            theirs].item()
    ref_grads = convert_mmseg_state_dict({k: p.grad for k, p in ref.named_parameters()},
                                         is_resnet=False)
    mmseg_peer.assert_same_gradients(ref_grads, {k: p.grad for k, p in model.named_parameters()},
                                     rel=1e-8, theory_zero=THEORY_ZERO, zero_rel=1e-12)

    keys = {"pos_embed": dict(decay_mult=0.0), "cls_token": dict(decay_mult=0.0),
            "norm": dict(decay_mult=0.0)}
    ref_opt = mmseg_build_optimizer(ref, dict(type="AdamW", lr=6e-5, betas=(0.9, 0.999),
                                             weight_decay=0.01,
                                             paramwise_cfg=dict(custom_keys=keys)))
    cfg = get_d2seg_cfg(YAML, NARROW + [
        "SOLVER.OPTIMIZER", "AdamW", "SOLVER.BASE_LR", 6e-5, "SOLVER.WEIGHT_DECAY", 0.01,
        "SOLVER.PARAMWISE.CUSTOM_KEYS",
        [["pos_embed", 1.0, 0.0], ["cls_token", 1.0, 0.0], ["norm", 1.0, 0.0]]])
    opt = build_optimizer(cfg, model)
    decay = {n: group["weight_decay"] for group in opt.param_groups for p in group["params"]
             for n, q in model.named_parameters() if q is p}
    assert decay["backbone.pos_embed"] == decay["backbone.cls_token"] == 0.0
    assert decay["backbone.layers.0.ln1.weight"] == decay["backbone.ln1.weight"] == 0.01
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    ref_opt.step()
    opt.step()
    ref_after = convert_mmseg_state_dict({k: p.detach() for k, p in ref.named_parameters()},
                                         is_resnet=False)
    for k, p in model.named_parameters():
        update = (ref_after[k] - before[k]).abs().max()
        assert update > 0, k
        assert (p.detach() - ref_after[k]).abs().max() <= 1e-6 * update, k


@pytest.mark.parametrize("mmseg_name, opts", [
    ("vit/upernet_vit-b16_ln_mln_512x512_160k_ade20k", ["MODEL.VIT.FINAL_NORM", True]),
    ("vit/upernet_deit-s16_512x512_80k_ade20k",
     ["MODEL.VIT.EMBED_DIMS", 384, "MODEL.VIT.NUM_HEADS", 6] + NO_NECK[:2]
     + ["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["vit2", "vit5", "vit8", "vit11"],
        "MODEL.AUX_HEAD.IN_FEATURES", ["vit11"]]),
])
def test_vit_configs_build_mmseg_shapes(mmseg_name, opts, monkeypatch):
    """The base yaml with the variant's values has the parameter names and shapes of mmseg's
    own config (150 classes)."""
    assert_mmseg_shapes(YAML, mmseg_name, ["MODEL.SEM_SEG_HEAD.NORM", "BN",
                                           "MODEL.AUX_HEAD.NORM", "BN",
                                           "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150] + opts,
                        monkeypatch)


def assert_mmseg_shapes(yaml, mmseg_name, opts, monkeypatch):
    """d2seg's model from ``yaml`` + ``opts`` has the parameter names (after the mmseg
    conversion) and shapes of the model of mmseg's config ``mmseg_name`` (SyncBN as BN)."""
    for fn in ("kaiming_uniform_", "kaiming_normal_", "uniform_", "normal_", "trunc_normal_",
               "xavier_uniform_"):  # full-size models: only the shapes matter, skip the init
        monkeypatch.setattr(torch.nn.init, fn, lambda t, *args, **kwargs: t)
    cfg = mmseg_peer.mmseg_config(mmseg_name)
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models import build_segmentor

    mmseg_peer.syncbn_to_bn(cfg.model)
    cfg.model.pretrained = None
    ref = build_segmentor(cfg.model)
    theirs = convert_mmseg_state_dict(
        {k: v.shape for k, v in ref.state_dict().items()}, is_resnet=False)
    model = build_model(get_d2seg_cfg(yaml, opts))
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours == theirs
