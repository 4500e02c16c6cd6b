"""Speed options: BN folding, Winograd convs, channels_last, compile, AMP (all on the CPU).

Every optimisation must leave the outputs equal to the plain model's within float rounding."""
import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from common import REPO_CONFIGS, get_d2seg_cfg, random_batch, tiny_cfg
from d2seg.modeling.fuse import fold_bn_into_conv, fuse_conv_bn, is_batch_norm
from d2seg.cpu_kernels.winograd import (
    WinogradConv2d, WinogradPlainConv2d, convert_to_winograd, winograd_conv2d, winograd_matrices,
)
from d2seg.modeling.speed import SpeedOptions, optimize_for_inference
from mmseg_peer import randomize_

ZOO = ["fcn_r50-d8", "pspnet_r50-d8", "deeplabv3_r50-d8", "deeplabv3plus_r50-d8", "upernet_r50",
       "gcnet_r50-d8", "nonlocal_r50-d8", "danet_r50-d8", "ann_r50-d8", "psanet_r50-d8",
       "ccnet_r50-d8", "fcn_hr18", "ocrnet_hr18"]
BN = ["MODEL.RESNETS.NORM", "BN", "MODEL.HRNET.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
      "MODEL.AUX_HEAD.NORM", "BN", "MODEL.CASCADE_HEAD.NORM", "BN"]


@torch.no_grad()
def _realistic(model, img):
    """Random weights and BN statistics (so folding is not trivial) as in the parity tests;
    HRNet's BN statistics calibrated on random images (its fused sums explode otherwise); then
    the classifiers scaled so the logits are O(1): the 1e-4 tolerance means ~1e-5 relative."""
    randomize_(model)
    model.eval()
    if hasattr(model.backbone, "stage2"):  # HRNet
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average
        model.train()
        model.encode_decode(torch.randn(4, *img.shape[1:], generator=torch.Generator()
                                        .manual_seed(1)))
        model.eval()
    for head in [getattr(model, "cascade_head", None), model.decode_head]:
        if head is not None:
            # each head's own logits to O(1) (OCR's gather softmax reads the cascade's)
            logits = model.decode(model.backbone(img)) if head is model.decode_head else \
                head(model.backbone(img))[0]
            head.conv_seg.weight /= logits.abs().max() / 2
            head.conv_seg.bias.zero_()
    return model


# ---- BN folding ----------------------------------------------------------------------------
def test_fold_bn_into_conv_matches_conv_then_bn():
    torch.manual_seed(0)
    for bias in (False, True):
        conv = nn.Conv2d(4, 6, 3, padding=1, bias=bias)
        bn = nn.BatchNorm2d(6).eval()
        randomize_(bn)
        x = torch.randn(2, 4, 9, 7)
        expected = bn(conv(x))
        fold_bn_into_conv(conv, bn)
        assert (conv(x) - expected).abs().max() < 1e-5


def test_fuse_requires_eval_mode():
    model = build_model(tiny_cfg())
    with pytest.raises(RuntimeError, match="eval"):
        fuse_conv_bn(model)


@pytest.mark.parametrize("yaml", ZOO)
def test_optimized_zoo_model_equals_plain(yaml):
    """Fused BN + Winograd F4 + 1x1 GEMMs + fused attention (+ channels_last on HRNet) against
    the plain model, on every zoo method: the options of docs/benchmark.md's table."""
    cfg = get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml", BN)
    img = torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))
    plain = _realistic(build_model(cfg), img)
    fused = fuse_conv_bn(copy.deepcopy(plain))
    assert not any(is_batch_norm(m) for m in fused.modules())
    opt = optimize_for_inference(copy.deepcopy(plain), SpeedOptions(
        winograd="F4", gemm_1x1=True, fused_attention=True, fold_projections=True,
        channels_last=yaml.endswith("hr18")))
    if "hr18" not in yaml:
        assert any(isinstance(m, WinogradConv2d) for m in opt.modules())
    with torch.no_grad():
        expected = plain.encode_decode(img)
        got_fused = fused.encode_decode(img)
        got = opt.encode_decode(img)
    assert 0.5 < expected.abs().max() < 10
    assert (got_fused - expected).abs().max() < 1e-4
    assert (got - expected).abs().max() < 1e-4


def test_fuse_folds_sequential_and_named_pairs():
    """HRNet: Sequential(conv, BN) (transitions, fuse layers) and conv{k}/bn{k} blocks."""
    from test_hrnet_ocr import tiny_ocr_cfg

    model = build_model(tiny_ocr_cfg()).eval()
    randomize_(model)
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.encode_decode(img)
        fuse_conv_bn(model)
        got = model.encode_decode(img)
    assert not any(is_batch_norm(m) for m in model.modules())
    assert isinstance(model.backbone.bn1, nn.Identity)
    assert isinstance(model.backbone.stage2[0].branches[0][0].bn2, nn.Identity)
    assert (got - expected).abs().max() < 1e-4 * max(1.0, expected.abs().max().item())


# ---- Winograd ------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [2, 4])
def test_winograd_matrices_compute_a_correlation(m):
    BT, G, AT = winograd_matrices(m)
    d = torch.randn(m + 2, dtype=torch.float64)
    g = torch.randn(3, dtype=torch.float64)
    expected = torch.stack([d[i:i + 3] @ g for i in range(m)])
    assert (AT @ ((G @ g) * (BT @ d)) - expected).abs().max() < 1e-12


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("n,c,co,h,w,d", [
    (1, 8, 6, 16, 16, 1), (2, 5, 7, 13, 19, 1), (2, 4, 3, 17, 22, 2), (1, 3, 4, 9, 30, 3),
    (1, 4, 4, 5, 6, 4),
])
def test_winograd_conv_forward_backward_exact(m, n, c, co, h, w, d):
    """In float64 Winograd is exact: forward and all gradients equal the direct conv's, for
    odd sizes, dilations (polyphase) and channels-last inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
    wt = torch.randn(co, c, 3, 3, dtype=torch.float64, generator=g)
    b = torch.randn(co, dtype=torch.float64, generator=g)
    grad = torch.randn(n, co, h, w, dtype=torch.float64, generator=g)
    results = []
    for fn in (lambda *a: F.conv2d(*a, padding=d, dilation=d),
               lambda *a: winograd_conv2d(*a, dilation=d, m=m)):
        xs = [t.clone().requires_grad_() for t in (x, wt, b)]
        out = fn(*xs)
        out.backward(grad)
        results.append([out.detach()] + [t.grad for t in xs])
    for a, b_ in zip(*results):
        assert (a - b_).abs().max() < 1e-10
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = winograd_conv2d(x_cl, wt, b, dilation=d, m=m)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert (y - results[0][0]).abs().max() < 1e-10


@pytest.mark.parametrize("h,w,d", [(13, 21, 5), (13, 21, 12), (16, 32, 12), (9, 40, 20),
                                   (6, 7, 8)])
def test_tap_conv3x3_forward_backward_exact(h, w, d):
    """The padding-skipping dilated conv (ASPP's dilations) and its gradients equal
    F.conv2d's, also where a tap reads only padding (d >= h) and on a non-contiguous input."""
    from d2seg.cpu_kernels.tap_conv import tap_conv3x3, tap_conv_saving

    g = torch.Generator().manual_seed(d)
    x = torch.randn(2, 8, w, h, generator=g).transpose(2, 3).requires_grad_()
    weight = torch.randn(6, 8, 3, 3, generator=g).requires_grad_()
    bias = torch.randn(6, generator=g).requires_grad_()
    grad_out = torch.randn(2, 6, h, w, generator=g)
    expected = F.conv2d(x, weight, bias, padding=d, dilation=d)
    got = tap_conv3x3(x, weight, bias, d)
    assert (got - expected).abs().max() < 1e-4
    for a, b in zip(torch.autograd.grad(expected, (x, weight, bias), grad_out),
                    torch.autograd.grad(got, (x, weight, bias), grad_out)):
        assert (a - b).abs().max() < 1e-4 * max(1.0, a.abs().max().item())
    assert 0 < tap_conv_saving(h, w, d) < 1


def test_convert_to_winograd_keeps_keys_and_skips_ineligible():
    cfg = tiny_cfg(width=64, opts=["MODEL.SEM_SEG_HEAD.CONVS_DIM", 128])
    model = build_model(cfg)
    keys = list(model.state_dict())
    convert_to_winograd(model, 4)
    assert list(model.state_dict()) == keys
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert isinstance(convs["decode_head.convs.1"], WinogradConv2d)  # 128 -> 128, 3x3
    assert not isinstance(convs["decode_head.conv_seg"], WinogradConv2d)  # 1x1
    assert not isinstance(convs["backbone.stem.conv1"], WinogradConv2d)  # stride 2
    assert not isinstance(convs["backbone.res2.0.conv1"], WinogradConv2d)  # 64 channels
    plain = nn.Sequential(nn.Conv2d(128, 128, 3, padding=2, dilation=2))
    convert_to_winograd(plain, 4)
    assert isinstance(plain[0], WinogradPlainConv2d)


def test_winograd_training_step_matches_direct():
    """One SGD step with Winograd F4 convs gives the direct conv's losses and gradients."""
    cfg = tiny_cfg(width=64, opts=["MODEL.SEM_SEG_HEAD.CONVS_DIM", 128])
    batch = random_batch(2, 64, 64)
    direct = build_model(cfg).train()
    wino = convert_to_winograd(copy.deepcopy(direct), 4)
    grads = []
    for model in (direct, wino):
        torch.manual_seed(0)  # same dropout masks
        with EventStorage():
            loss = sum(model(batch).values())
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert any(isinstance(m, WinogradConv2d) for m in wino.modules())
    for n, g in grads[0].items():
        assert (grads[1][n] - g).abs().max() <= 1e-4 * max(1.0, g.abs().max().item()), n


def test_fold_projections_training_matches_plain():
    """ANN with its attention out_project composed into the fusion bottleneck: same losses and
    gradients for every weight (out_project included) in a training step."""
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/ann_r50-d8.yaml", BN)
    batch = random_batch(2, 64, 128)
    plain = build_model(cfg)
    randomize_(plain)  # out_project is zero-initialised: the fold would be trivial
    folded = copy.deepcopy(plain)
    SpeedOptions(fold_projections=True).apply(folded)
    assert folded.decode_head.fusion.fold_projections and folded.decode_head.context.fold_projections
    losses, grads = [], []
    for model in (plain.train(), folded.train()):
        torch.manual_seed(0)  # same dropout masks
        with EventStorage():
            loss = sum(model(batch).values())
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert grads[0].keys() == grads[1].keys()
    scale = max(g.abs().max().item() for g in grads[0].values())
    for n, g in grads[0].items():
        assert (grads[1][n] - g).abs().max() <= 1e-4 * scale, n
    # the weights the fold composes, each against its own scale
    for key in ("fusion.stages.0.out_project.weight", "fusion.bottleneck.weight",
                "context.stages.0.out_project.weight", "context.bottleneck.weight"):
        a, b = grads[0]["decode_head." + key], grads[1]["decode_head." + key]
        assert a.abs().max() > 0
        assert (b - a).abs().max() <= 1e-3 * a.abs().max(), key


# ---- config options ------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("n", [1, 2])
def test_pointwise_gemm_conv_forward_backward_exact(layout, n):
    from d2seg.cpu_kernels.pointwise import pointwise_conv2d

    x = torch.randn(n, 12, 5, 8, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[:, :, :, ::2]
    x.requires_grad_(True)
    w = torch.randn(7, 12, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)
    got = pointwise_conv2d(x, w, b)
    expected = F.conv2d(x, w, b)
    assert got.shape == expected.shape and (got - expected).abs().max() < 1e-12
    g = torch.randn_like(expected)
    grads = torch.autograd.grad(got, (x, w, b), g)
    ref = torch.autograd.grad(expected, (x, w, b), g)
    assert all((a - r).abs().max() < 1e-12 for a, r in zip(grads, ref))


def test_convert_pointwise_to_gemm_keeps_keys_and_outputs():
    from d2seg.cpu_kernels.pointwise import (
        PointwiseGemmConv2d, PointwiseGemmPlainConv2d, convert_pointwise_to_gemm,
    )

    model = build_model(tiny_cfg()).eval()
    keys = list(model.state_dict())
    inputs = random_batch(1, 64, 96)
    with torch.no_grad():
        expected = model(inputs)[0]["sem_seg"]
        convert_pointwise_to_gemm(model)
        got = model(inputs)[0]["sem_seg"]
    assert list(model.state_dict()) == keys
    convs = dict(model.named_modules())
    assert isinstance(convs["decode_head.conv_seg"], PointwiseGemmPlainConv2d)
    assert isinstance(convs["backbone.res4.0.shortcut"], PointwiseGemmConv2d)  # 1x1, stride 1
    assert not isinstance(convs["backbone.res3.0.shortcut"], PointwiseGemmConv2d)  # stride 2
    assert not isinstance(convs["backbone.stem.conv1"], PointwiseGemmConv2d)  # 3x3
    assert (got - expected).abs().max() < 1e-4


def _with_and_without_speed(cfg, inputs):
    """(model built from ``cfg``, its output, the output of the same weights built with no
    MODEL.SPEED option and no autocast)."""
    model = build_model(cfg).eval()
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.SPEED = get_d2seg_cfg().MODEL.SPEED
    plain_cfg.SOLVER.AMP.ENABLED = False
    plain = build_model(plain_cfg).eval()
    plain.load_state_dict(model.state_dict())
    assert plain.speed == SpeedOptions()
    with torch.no_grad():
        got = model(inputs)[0]["sem_seg"]
        expected = plain(inputs)[0]["sem_seg"]
    return model, got, expected


def test_speed_config_applied_at_build():
    cfg = tiny_cfg(width=64, opts=["MODEL.SEM_SEG_HEAD.CONVS_DIM", 128,
                                   "MODEL.SPEED.WINOGRAD", "F4", "MODEL.SPEED.CHANNELS_LAST", True])
    built = build_model(cfg)  # before any forward (and before DDP would wrap it)
    assert any(isinstance(m, WinogradConv2d) for m in built.modules())
    assert built.decode_head.conv_seg.weight.is_contiguous(memory_format=torch.channels_last)
    model, got, expected = _with_and_without_speed(cfg, random_batch(1, 64, 96))
    assert any(isinstance(m, WinogradConv2d) for m in model.modules())
    assert model.decode_head.conv_seg.weight.is_contiguous(memory_format=torch.channels_last)
    assert (got - expected).abs().max() < 1e-4


def test_invalid_speed_options():
    with pytest.raises(ValueError, match="WINOGRAD"):
        SpeedOptions(winograd="F6")
    with pytest.raises(ValueError, match="dtype"):
        SpeedOptions(amp_dtype="int8")


def test_dilated_depthwise_stays_nchw_under_channels_last():
    """oneDNN's dilated depthwise conv is pathologically slow on channels-last inputs: those
    convs run in NCHW and give channels-last outputs back, with the same values."""
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/deeplabv3plus_r50-d8.yaml", BN + [
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res5"], "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
        "MODEL.ASPP_HEAD.C1_CHANNELS", 8, "MODEL.AUX_HEAD.CONVS_DIM", 16,
    ])
    model = build_model(cfg).eval()
    randomize_(model)
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.encode_decode(img)
        optimize_for_inference(model, SpeedOptions(channels_last=True))
        got = model.encode_decode(img)
    dw = model.decode_head.aspp_modules[1].depthwise_conv
    assert type(dw).__name__ == "NCHWConv2d" and dw.weight.is_contiguous()
    assert (got - expected).abs().max() < 1e-4 * max(1.0, expected.abs().max().item())


def test_compile_option_wraps_forward_keeps_keys(monkeypatch):
    # the "eager" backend checks the wiring without a C++ build
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    cfg = tiny_cfg(opts=["MODEL.SPEED.COMPILE", True])
    model = build_model(cfg).eval()
    keys = list(model.state_dict())
    inputs = random_batch(1, 64, 64)
    with torch.no_grad():
        out = model(inputs)[0]["sem_seg"]
    assert model.backbone._d2seg_compiled and model.decode_head._d2seg_compiled
    assert list(model.state_dict()) == keys
    assert out.shape == (5, 64, 64)


def test_inference_autocast_bf16():
    cfg = tiny_cfg(opts=["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", "bfloat16"])
    _, got, expected = _with_and_without_speed(cfg, random_batch(1, 64, 64))
    assert got.dtype == torch.float32
    assert (got - expected).abs().max() < 0.05 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_training_step_on_cpu(dtype):
    """SOLVER.AMP with Detectron2's trainer step on the CPU (its AMPTrainer needs CUDA)."""
    from detectron2.engine import SimpleTrainer

    from d2seg.engine import Trainer
    from d2seg.engine.amp import SegAMPTrainer, build_step_trainer

    cfg = tiny_cfg(opts=["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", dtype])
    model = build_model(cfg)
    before = copy.deepcopy(model.state_dict())
    batch = random_batch(2, 64, 64)
    opt = Trainer.build_optimizer(cfg, model)
    trainer = build_step_trainer(cfg, model, iter(lambda: batch, None), opt)
    assert isinstance(trainer, SegAMPTrainer)
    assert trainer.precision == getattr(torch, dtype)
    assert trainer.grad_scaler.is_enabled() == (dtype == "float16")
    with EventStorage() as storage:
        trainer.storage = storage
        trainer.run_step()
        loss = storage.history("total_loss").latest()
    assert torch.isfinite(torch.tensor(loss))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("conv_seg" in k for k in changed)
    cfg.SOLVER.AMP.ENABLED = False
    assert type(build_step_trainer(cfg, model, iter(lambda: batch, None), opt)) is SimpleTrainer
