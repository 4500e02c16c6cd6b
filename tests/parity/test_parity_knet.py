"""K-Net (IterativeDecodeHead: 3 KernelUpdateHeads on a kernel-generate head): d2seg vs
MMSegmentation 0.30 with the same (randomised) weights, read by SegCheckpointer from mmseg
checkpoint files. Narrow models (ResNet-18 of base width 16 / Swin of width 24; K-Net kernels of
32 channels cut into updator rows of 16, 4 heads, 7 classes): logits at sizes that are multiples
of neither the output stride nor the window, for the FCN generator on ResNet and the UPerNet one
on Swin (float32 and float64); one training step's five losses (stages 0-3 + aux) and every
gradient, in float64; one optimiser step of K-Net-Swin's recipe (AdamW + custom_keys, whole-model
grad clip, step LR) through both libraries' trainers; the update heads' dynamic conv with 3x3
kernels and the 2x mask transform, module against module."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from test_checkpoint_formats import one_thread  # noqa: F401  (autouse: small inputs, 1 thread)
from test_optimizer_constructors import _no_mmcv_ops  # noqa: F401  (autouse: mmcv's DCN probe)
from test_train_step_parity import D2SEG_NARROW_RESNET, WIDTHS

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

C, UPD, HEADS, FFN, K = 32, 16, 4, 64, 7  # kernel width, updator rows, heads, FFN, classes
SWIN_WIDTH = 24
BN = [f"MODEL.{n}.NORM" for n in ("RESNETS", "SEM_SEG_HEAD", "AUX_HEAD")]
D2SEG_TINY = [x for key in BN for x in (key, "BN")] + [
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", C, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", K,
    "MODEL.AUX_HEAD.CONVS_DIM", 16, "MODEL.KNET_HEAD.NUM_HEADS", HEADS,
    "MODEL.KNET_HEAD.FEEDFORWARD_CHANNELS", FFN, "MODEL.KNET_HEAD.UPDATOR_IN_CHANNELS", UPD,
    "MODEL.KNET_HEAD.UPDATOR_FEAT_CHANNELS", UPD, "MODEL.KNET_HEAD.UPDATOR_OUT_CHANNELS", UPD]
# variant -> (mmseg config, d2seg base yaml, d2seg backbone overrides)
VARIANTS = {
    "fcn_r18": ("knet/knet_s3_fcn_r50-d8_8x2_512x512_adamw_80k_ade20k", "knet_s3_fcn_r50-d8",
                D2SEG_NARROW_RESNET),
    "upernet_swin": ("knet/knet_s3_upernet_swin-t_8x2_512x512_adamw_80k_ade20k",
                     "knet_s3_upernet_swin-t",
                     ["MODEL.SWIN.EMBED_DIMS", SWIN_WIDTH, "MODEL.SWIN.DEPTHS", [2, 2, 2, 2],
                      "MODEL.SWIN.NUM_HEADS", [1, 2, 3, 4], "MODEL.SWIN.DROP_PATH_RATE", 0.0]),
}
# fc_mask's bias adds the same term (bias . features) to every class's logit: the softmax over the
# classes (the loss, the next stage's mask pooling) cancels it, so its gradient is zero in theory
THEORY_ZERO = {f"decode_head.kernel_update_head.{i}.fc_mask.bias" for i in range(3)}


def _tiny_mmseg_cfg(variant):
    cfg = mmseg_peer.mmseg_config(VARIANTS[variant][0])
    model = cfg.model
    if variant == "fcn_r18":
        model.backbone.update(depth=18, stem_channels=WIDTHS[0], base_channels=WIDTHS[0])
        widths = WIDTHS
    else:
        model.backbone.update(embed_dims=SWIN_WIDTH, depths=[2] * 4, num_heads=[1, 2, 3, 4],
                              drop_path_rate=0.0)
        widths = [SWIN_WIDTH * 2 ** i for i in range(4)]
    gen = model.decode_head.kernel_generate_head
    idx = gen.in_index
    gen.update(channels=C, num_classes=K,
               in_channels=[widths[i] for i in idx] if isinstance(idx, list) else widths[idx])
    for head in model.decode_head.kernel_update_head:
        head.update(num_classes=K, num_heads=HEADS, feedforward_channels=FFN, in_channels=C,
                    out_channels=C)
        head.kernel_updator_cfg.update(in_channels=UPD, feat_channels=UPD, out_channels=UPD)
    model.auxiliary_head.update(in_channels=widths[model.auxiliary_head.in_index], channels=16,
                                num_classes=K)
    return cfg


def _calibrate_bn(ref, img):
    """mmseg_peer.calibrate_bn_, whose training-mode encode_decode needs one tensor where mmseg's
    K-Net head returns the list of stages: the last one is taken meanwhile."""
    head = ref.decode_head

    def last_stage(inputs):
        out = type(head).forward(head, inputs)
        return out[-1] if isinstance(out, list) else out

    head.forward = last_stage
    mmseg_peer.calibrate_bn_(ref, img)
    del head.forward


def _pair(variant, tmp_path, size):
    """mmseg's model (random weights, BN statistics calibrated on ``size`` images) and d2seg's,
    loaded from its mmseg checkpoint file."""
    ref = mmseg_peer.build_mmseg_model(_tiny_mmseg_cfg(variant))
    _calibrate_bn(ref, mmseg_peer.calibration_images(2, size))
    _, yaml, backbone = VARIANTS[variant]
    model = build_model(get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml",
                                      D2SEG_TINY + backbone))
    return ref, mmseg_peer.load_via_checkpointer(ref, model, tmp_path / f"{variant}.pth")


# float64 agrees to ~1e-13: a small departure (an LN eps, a softmax axis) cannot hide there
@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("variant, size", [("fcn_r18", (75, 101)), ("upernet_swin", (97, 131))])
def test_knet_logits_match_mmseg(variant, size, dtype, rel, tmp_path):
    ref, model = _pair(variant, tmp_path, size)
    img, expected, got = mmseg_peer.logits_in(ref, model, size, dtype)
    with torch.no_grad():
        ref.decode_head.training = True  # (only) the flag that makes mmseg return every stage
        ref_stages = ref.decode_head(ref.extract_feat(img))
        stages = model.decode_head.stage_logits(model.extract_feat(img))
    assert expected.shape == (1, K, *size)
    assert 0.1 < expected.abs().max() < 1e3  # the comparison is not of zeros
    mmseg_peer.assert_close_to_scale(got, expected, rel)
    assert len(stages) == len(ref_stages) == 4
    for s, r in zip(stages, ref_stages):
        mmseg_peer.assert_close_to_scale(s, r, rel, what="stage logits")


def test_knet_training_step_matches_mmseg(tmp_path):
    """Five losses and every gradient of one forward/backward (BN in training mode, dropout off),
    in float64 (mmseg's loss_ce.s{i} is d2seg's loss_sem_seg_s{i})."""
    ref, model = _pair("fcn_r18", tmp_path, (64, 64))
    ref.double()
    model.double()
    g = torch.Generator().manual_seed(0)
    img = mmseg_peer.calibration_images(2, (61, 67), seed=2).double()
    label = torch.randint(0, K, (2, 61, 67), generator=g)
    label[torch.rand(2, 61, 67, generator=g) < 0.1] = 255
    expected, losses = mmseg_peer.training_losses(ref, model, img, label)
    names = {f"loss_sem_seg_s{i}": f"decode.loss_ce.s{i}" for i in range(4)}
    names["loss_aux"] = "aux.loss_ce"
    assert set(losses) == set(names)
    for ours, theirs in names.items():
        assert abs(losses[ours].item() - expected[theirs].item()) <= 1e-10 * expected[theirs].item()
    sum(expected[k] for k in names.values()).backward()
    sum(losses.values()).backward()
    ref_grads = convert_mmseg_state_dict({k: p.grad for k, p in ref.named_parameters()})
    mmseg_peer.assert_same_gradients(ref_grads, {k: p.grad for k, p in model.named_parameters()},
                                     rel=1e-8, theory_zero=THEORY_ZERO, zero_rel=1e-12)


@pytest.mark.parametrize("conv_kernel_size, mask_stride", [(3, 1), (1, 2), (3, 2)])
def test_kernel_update_head_matches_mmseg(conv_kernel_size, mask_stride):
    """One KernelUpdateHead on its own, where the configs never go: 3x3 dynamic kernels (a grouped
    conv here, mmseg's per-image conv) and the mask transform at half resolution, batch 2."""
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models.decode_heads.knet_head import KernelUpdateHead as RefHead

    from d2seg.modeling.heads.knet import KernelUpdateHead

    kw = dict(num_heads=2, num_mask_fcs=2, feedforward_channels=FFN,
              conv_kernel_size=conv_kernel_size, mask_transform_stride=mask_stride)
    ref = RefHead(num_classes=K, in_channels=16, out_channels=16,
                  feat_transform_cfg=dict(conv_cfg=dict(type="Conv2d"), act_cfg=None),
                  kernel_updator_cfg=dict(type="KernelUpdator", in_channels=8, feat_channels=8,
                                          out_channels=8), **kw)
    mmseg_peer.randomize_(ref)
    model = KernelUpdateHead(16, feat_transform_kernel_size=1, updator_in_channels=8,
                             updator_feat_channels=8, updator_out_channels=8, **kw)
    sd = convert_mmseg_state_dict({f"decode_head.{k}": v for k, v in ref.state_dict().items()})
    model.load_state_dict({k[len("decode_head."):]: v for k, v in sd.items()})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 13, 11, generator=g)
    kernels = torch.randn(2, K, 16, conv_kernel_size, conv_kernel_size, generator=g) / 4
    masks = torch.randn(2, K, 13, 11, generator=g)
    with torch.no_grad():
        expected = ref.eval()(x, kernels, masks)
        got = model.eval()(x, kernels, masks)
    for e, o in zip(expected, got):
        mmseg_peer.assert_close_to_scale(o, e, what="update head")


def test_knet_swin_recipe_step_matches_mmseg():
    """One optimiser step of K-Net-Swin's recipe in float64, mmcv's runner pieces vs d2seg's
    trainer: AdamW with Swin's custom_keys, grad_clip(max_norm=1) over the whole model, step LR
    (steps moved to 20/30 with 10 warm-up iterations, so iteration 37 is past both). Losses,
    every gradient and every parameter after the step."""
    from test_train_step_parity import (CROP, _batch, _d2seg_step, _mmseg_step,
                                        _no_dropout)

    cfg_ref = _tiny_mmseg_cfg("upernet_swin")
    cfg_ref.lr_config.update(step=[20, 30], warmup_iters=10)
    ref = mmseg_peer.build_mmseg_model(cfg_ref)
    _, yaml, backbone = VARIANTS["upernet_swin"]
    cfg = get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml", D2SEG_TINY + backbone + [
        "SOLVER.OPTIMIZER", "AdamW", "SOLVER.BASE_LR", 6e-5, "SOLVER.WEIGHT_DECAY", 5e-4,
        "SOLVER.WEIGHT_DECAY_NORM", 5e-4, "SOLVER.PARAMWISE.CUSTOM_KEYS",
        [["absolute_pos_embed", 1.0, 0.0], ["norm", 1.0, 0.0],
         ["relative_position_bias_table", 1.0, 0.0]],
        "SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1.0, "SOLVER.CLIP_GRADIENTS.NORM_TYPE", 2.0,
        "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", (20, 30),
        "SOLVER.GAMMA", 0.1, "SOLVER.WARMUP_ITERS", 10, "SOLVER.WARMUP_FACTOR", 1e-3,
        "SOLVER.WARMUP_METHOD", "linear", "SOLVER.MAX_ITER", 100, "INPUT.CROP.SIZE", CROP])
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(
        convert_mmseg_state_dict(ref.state_dict(), is_resnet=False), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    for m in (ref, model):
        m.double().train()
        _no_dropout(m)
    batch = _batch(K)
    with torch.no_grad():
        imgs = torch.stack([model.normalize(x["image"]) for x in batch]).double()
    labels = torch.stack([x["sem_seg"] for x in batch])
    before = {k: p.detach().clone() for k, p in ref.named_parameters()}
    ref_loss, ref_lr = _mmseg_step(ref, cfg_ref, imgs, labels)
    loss, lr = _d2seg_step(model, cfg, batch)
    assert ref_lr == pytest.approx(6e-5 * 0.01, rel=1e-12) and lr == pytest.approx(ref_lr,
                                                                                   rel=1e-12)
    assert abs(loss - ref_loss) <= 1e-10 * abs(ref_loss)

    def conv(d):
        return convert_mmseg_state_dict(d, is_resnet=False)

    ref_grads = conv({k: p.grad for k, p in ref.named_parameters()})
    # the gradients as clipped (in place) before the step: the clip was active
    assert torch.stack([g.norm() for g in ref_grads.values()]).norm() == pytest.approx(1.0)
    mmseg_peer.assert_same_gradients(
        ref_grads, {k: p.grad for k, p in model.named_parameters()}, rel=1e-8,
        theory_zero=THEORY_ZERO | {"backbone.norm0.bias", "backbone.norm1.bias"},
        zero_rel=1e-12)
    ref_params = conv({k: p.detach() for k, p in ref.named_parameters()})
    updates = conv({k: p.detach() - before[k] for k, p in ref.named_parameters()})
    for k, p in model.named_parameters():
        assert (p.detach() - ref_params[k]).abs().max() <= (
            1e-8 * updates[k].abs().max() + 1e-15 * ref_params[k].abs().max()), k
