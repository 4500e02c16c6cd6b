"""Issue 2: registration, backbone shapes, losses, padding, slide inference, schedule, errors."""
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, build_backbone, build_model

import d2seg
from common import REPO_CONFIGS, get_d2seg_cfg, random_batch, tiny_cfg
from d2seg.modeling.losses import cross_entropy
from d2seg.modeling.meta_arch.encoder_decoder import pad_batch, slide_windows


def test_import_registers_components():
    assert "EncoderDecoder" in META_ARCH_REGISTRY
    assert "build_dilated_resnet_backbone" in BACKBONE_REGISTRY
    assert "FCNHead" in SEM_SEG_HEADS_REGISTRY


def test_add_config_keys_have_defaults():
    cfg = get_cfg()
    d2seg.add_d2seg_config(cfg)
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"  # Detectron2's: d2seg only adds keys
    assert cfg.MODEL.AUX_HEAD.LOSS_WEIGHT == 0.4 and cfg.MODEL.AUX_HEAD.NAME == ""
    assert list(cfg.MODEL.ASPP_HEAD.DILATIONS) == [1, 12, 24, 36]
    assert cfg.TEST.MODE == "whole"


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("style", ["pytorch", "caffe"])
@pytest.mark.parametrize("os_, strides, dilations", [
    (8, [1, 2, 1, 1], [1, 1, 2, 4]), (16, [1, 2, 2, 1], [1, 1, 1, 2]), (32, [1, 2, 2, 2], [1, 1, 1, 1])])
def test_resnet_shapes_strides_channels(depth, style, os_, strides, dilations):
    cfg = tiny_cfg(depth=depth, width=8, opts=[
        "MODEL.RESNETS.STAGE_STRIDES", strides, "MODEL.RESNETS.STAGE_DILATIONS", dilations,
        "MODEL.RESNETS.STEM_TYPE", "deeplab" if style == "pytorch" else "basic",
        "MODEL.RESNETS.STRIDE_IN_1X1", style == "caffe"])
    backbone = build_backbone(cfg)
    out = backbone(torch.randn(1, 3, 64, 64))
    shape = backbone.output_shape()
    expansion = 4 if depth >= 50 else 1
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        stride = min(4 * 2 ** i, os_)
        assert shape[name].stride == stride
        assert shape[name].channels == 8 * expansion * 2 ** i
        assert out[name].shape[-2:] == (64 // stride, 64 // stride)
    if style == "pytorch":
        assert backbone.stem.conv1.weight.shape[-1] == 3 and hasattr(backbone.stem, "conv3")
    else:
        assert backbone.stem.conv1.weight.shape[-1] == 7


def test_resnet50_v1c_d8_layout_matches_mmseg():
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/fcn_r50-d8.yaml", ["MODEL.RESNETS.NORM", "BN"])
    b = build_backbone(cfg)
    # contract_dilation: first block of res4 uses d=1, the rest d=2; res5: 2 then 4
    assert [blk.conv2.dilation[0] for blk in b.res4] == [1, 2, 2, 2, 2, 2]
    assert [blk.conv2.dilation[0] for blk in b.res5] == [2, 4, 4]
    assert [blk.conv2.padding[0] for blk in b.res5] == [2, 4, 4]
    # pytorch style: the stride sits on the 3x3 conv
    assert b.res3[0].conv2.stride == (2, 2) and b.res3[0].conv1.stride == (1, 1)
    # stride-1 dilated stages still get a projection shortcut in their first block
    assert b.res4[0].shortcut is not None and b.res4[0].shortcut.stride == (1, 1)
    assert [b.stem.conv1.out_channels, b.stem.conv2.out_channels, b.stem.conv3.out_channels] == [32, 32, 64]
    # mmseg 0.30: sum(p.numel() for p in ResNetV1c(depth=50, ...).parameters()) == 23_527_264
    assert sum(p.numel() for p in b.parameters()) == 23_527_264


def test_freeze_at_and_norms():
    cfg = tiny_cfg(opts=["MODEL.BACKBONE.FREEZE_AT", 2, "MODEL.RESNETS.NORM", "FrozenBN"])
    b = build_backbone(cfg)
    assert not any(p.requires_grad for p in b.stem.parameters())
    assert not any(p.requires_grad for p in b.res2.parameters())
    gn = build_backbone(tiny_cfg(width=64, opts=["MODEL.RESNETS.NORM", "GN"]))
    assert isinstance(gn.res3[0].conv1.norm, torch.nn.GroupNorm)


def test_loss_averages_over_all_pixels_like_mmseg():
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    per_pixel = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert torch.allclose(cross_entropy(logits, target), per_pixel.sum() / target.numel())
    n_valid = (target != 255).sum()
    assert torch.allclose(cross_entropy(logits, target, avg_non_ignore=True), per_pixel.sum() / n_valid)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weighted = torch.nn.functional.cross_entropy(logits, target, weight=w, ignore_index=255, reduction="none")
    assert torch.allclose(cross_entropy(logits, target, class_weight=w), weighted.mean())


def test_pad_batch_pads_image_zero_and_label_ignore_bottom_right():
    imgs = [torch.ones(3, 5, 7), torch.ones(3, 6, 4) * 2]
    labels = [torch.zeros(5, 7, dtype=torch.long), torch.ones(6, 4, dtype=torch.long)]
    x = pad_batch(imgs, (8, 8), 0, 0.0)
    y = pad_batch(labels, (8, 8), 0, 255)
    assert x.shape == (2, 3, 8, 8) and y.shape == (2, 8, 8)
    assert (x[0, :, :5, :7] == 1).all() and (x[0, :, 5:] == 0).all() and (x[0, :, :, 7:] == 0).all()
    assert (y[0, :5, :7] == 0).all() and (y[0, 5:] == 255).all() and (y[1, :, 4:] == 255).all()
    assert pad_batch(labels, (0, 0), 32, 255).shape == (2, 32, 32)


def test_training_pads_to_crop_size_so_loss_matches_mmseg():
    """The padded label pixels count in the loss denominator, exactly as mmseg's Pad + mean."""
    model = build_model(tiny_cfg(aux=False, opts=["INPUT.CROP.ENABLED", True, "INPUT.CROP.SIZE", [48, 48]]))
    model.train()
    seen = {}
    orig = model.compute_losses
    model.compute_losses = lambda f, t: seen.setdefault("t", t) is not None and orig(f, t)
    model(random_batch(n=1, h=32, w=40))
    t = seen["t"]
    assert t.shape == (1, 48, 48) and (t[0, 32:] == 255).all() and (t[0, :, 40:] == 255).all()


def test_slide_windows_grid_as_mmseg():
    wins = slide_windows(1024, 2048, (769, 769), (513, 513))
    assert len(wins) == 2 * 4
    assert wins[0] == (0, 769, 0, 769) and wins[-1] == (255, 1024, 1279, 2048)
    # image smaller than a window: one clipped window
    assert slide_windows(100, 50, (769, 769), (513, 513)) == [(0, 100, 0, 50)]


def test_slide_accumulates_and_normalises_by_count():
    model = build_model(tiny_cfg(opts=["TEST.MODE", "slide", "TEST.CROP_SIZE", [24, 24], "TEST.STRIDE", [10, 10]])).eval()
    # a per-pixel "network": slide must give back exactly the whole-image map
    model.encode_decode = lambda x: x[:, :1].repeat(1, model.num_classes, 1, 1) * 2 + 1
    img = torch.randn(1, 3, 50, 37)
    assert torch.allclose(model.slide_inference(img), img[:, :1].repeat(1, 5, 1, 1) * 2 + 1, atol=1e-6)


def test_slide_equals_whole_when_one_window_covers_the_image():
    cfg = tiny_cfg(opts=["TEST.CROP_SIZE", [64, 64], "TEST.STRIDE", [32, 32]])
    whole = build_model(cfg).eval()
    slide = build_model(cfg.clone()).eval()
    slide.load_state_dict(whole.state_dict())
    slide.test_mode = "slide"
    batch = [{"image": torch.rand(3, 56, 60) * 255, "height": 112, "width": 120}]
    with torch.no_grad():
        a, b = whole(batch)[0]["sem_seg"], slide(batch)[0]["sem_seg"]
    assert a.shape == (5, 112, 120) and torch.equal(a, b)


def test_inference_resizes_to_original_size():
    model = build_model(tiny_cfg()).eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 40, 50) * 255, "height": 80, "width": 100},
                     {"image": torch.rand(3, 33, 45) * 255}])
    assert out[0]["sem_seg"].shape == (5, 80, 100) and out[1]["sem_seg"].shape == (5, 33, 45)


def test_poly_lr_matches_mmcv_formula():
    from d2seg.solver import build_lr_scheduler

    cfg = tiny_cfg(opts=["SOLVER.MAX_ITER", 100, "SOLVER.BASE_LR", 0.01])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [(0.01 - 1e-4) * (1 - i / 100) ** 0.9 + 1e-4 for i in range(100)]
    assert np.allclose(lrs, expected, rtol=1e-6)


def test_unknown_names_and_keys_raise_clear_errors():
    with pytest.raises(KeyError, match="NoSuchHead"):
        build_model(tiny_cfg(head="NoSuchHead"))
    with pytest.raises(KeyError, match="build_nope"):
        build_model(tiny_cfg(opts=["MODEL.BACKBONE.NAME", "build_nope"]))
    with pytest.raises((KeyError, AssertionError), match="MODEL.SEM_SEG_HEAD.NO_SUCH_KEY"):
        tiny_cfg(opts=["MODEL.SEM_SEG_HEAD.NO_SUCH_KEY", 1])
    with pytest.raises(ValueError, match="DEPTH=42"):
        build_model(tiny_cfg(depth=42))
    with pytest.raises(ValueError, match="TEST.MODE"):
        build_model(tiny_cfg(opts=["TEST.MODE", "sliding"]))
