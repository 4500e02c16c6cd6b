"""PSPHead, ASPPHead, DepthwiseSeparableASPPHead and UPerHead: shapes, mmseg layout, gradients."""
import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model

from common import REPO_CONFIGS, get_d2seg_cfg, random_batch, tiny_cfg
from d2seg.modeling.heads import ASPPHead, DepthwiseSeparableASPPHead, PSPHead, UPerHead
from d2seg.modeling.layers.separable_conv import DepthwiseSeparableConvModule

D8 = {"res2": ShapeSpec(channels=8, stride=4), "res3": ShapeSpec(channels=12, stride=8),
      "res4": ShapeSpec(channels=16, stride=8), "res5": ShapeSpec(channels=24, stride=8)}
D32 = {k: ShapeSpec(channels=v.channels, stride=4 * 2 ** i) for i, (k, v) in enumerate(D8.items())}


def _feats(shapes, n=2, h=64, w=80):
    return {k: torch.randn(n, s.channels, h // s.stride, w // s.stride) for k, s in shapes.items()}


def _head_from_yaml(yaml, shapes=D8):
    """The head of a base model config, narrowed to 16 channels, on small fake features."""
    cfg = get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml",
                        ["MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16])
    return SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, shapes)


def test_psp_head_shapes_and_mmseg_keys():
    head = _head_from_yaml("pspnet_r50-d8")
    assert isinstance(head, PSPHead) and head.pool_scales == (1, 2, 3, 6)
    assert head.bottleneck.in_channels == 24 + 4 * 16 and head.bottleneck.kernel_size == (3, 3)
    pools = [m[0].output_size for m in head.psp_modules]
    assert pools == [1, 2, 3, 6]
    keys = set(head.state_dict())
    assert {"psp_modules.3.1.weight", "psp_modules.3.1.norm.running_var"} <= keys
    logits, _ = head(_feats(D8))
    assert logits.shape == (2, 19, 8, 10) and head.common_stride == 8


def test_aspp_uses_dilations_12_24_36():
    # Parity gotcha: mmseg's ASPPHead class default is (1, 6, 12, 18); its configs use 1/12/24/36.
    for yaml in ("deeplabv3_r50-d8", "deeplabv3plus_r50-d8"):
        head = _head_from_yaml(yaml)
        assert head.dilations == (1, 12, 24, 36)
        first, *dilated = head.aspp_modules
        assert first.kernel_size == (1, 1) and first.padding == (0, 0)
        for d, branch in zip((12, 24, 36), dilated):
            conv = branch.depthwise_conv if yaml.startswith("deeplabv3plus") else branch
            assert conv.kernel_size == (3, 3) and conv.dilation == (d, d) and conv.padding == (d, d)
    assert ASPPHead(D8, in_features=["res5"], num_classes=3, channels=8).dilations == (1, 6, 12, 18)


def test_image_pool_has_bn_on_a_1x1_map():
    # Parity gotcha: image_pool = global pool -> 1x1 conv (no bias) -> BN -> ReLU, so in training
    # BN normalises each channel over the batch only (1 value per image), as in mmseg.
    head = _head_from_yaml("deeplabv3_r50-d8")
    pool, conv = head.image_pool
    assert isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size == 1
    assert conv.bias is None and isinstance(conv.norm, nn.BatchNorm2d)
    x = torch.randn(2, 24, 8, 10) * 10  # pooled values far apart compared with BN's eps
    head.train()
    out = head.image_pool(x)
    assert out.shape == (2, 16, 1, 1)
    # two images: BN maps each channel to about -1/+1, ReLU keeps about 0/1
    assert ((out == 0).sum(0) == 1).all()
    assert torch.allclose(out.sum(0), torch.ones(16, 1, 1), atol=1e-2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        head.image_pool(x[:1])  # mmseg fails the same way on a single-image batch
    head.eval()
    assert head.image_pool(x[:1]).shape == (1, 16, 1, 1)  # running statistics at test time
    logits, _ = head(_feats(D8))
    assert logits.shape == (2, 19, 8, 10)


def test_sep_aspp_head_low_level_branch():
    head = _head_from_yaml("deeplabv3plus_r50-d8")
    assert isinstance(head, DepthwiseSeparableASPPHead) and head.in_features == ["res5"]
    assert head.c1_bottleneck.in_channels == 8 and head.c1_bottleneck.out_channels == 48
    dw = head.aspp_modules[1].depthwise_conv
    assert dw.groups == 24 and dw.norm is not None
    assert head.aspp_modules[1].pointwise_conv.norm is not None
    sep = head.sep_bottleneck
    assert all(isinstance(m, DepthwiseSeparableConvModule) for m in sep)
    assert sep[0].depthwise_conv.in_channels == 16 + 48 and sep[0].depthwise_conv.padding == (1, 1)
    assert "aspp_modules.1.pointwise_conv.norm.weight" in head.state_dict()
    logits, _ = head(_feats(D8))
    assert logits.shape == (2, 19, 16, 20) and head.common_stride == 4  # at the res2 stride
    # C1_IN_FEATURE "" drops the low-level branch (mmseg's c1_in_channels=0)
    plain = DepthwiseSeparableASPPHead(D8, in_features=["res5"], num_classes=3, channels=8,
                                       norm="BN", c1_in_feature="", dilations=(1, 2))
    assert plain.c1_bottleneck is None and plain(_feats(D8))[0].shape == (2, 3, 8, 10)


def test_uper_head_fpn_layout():
    head = _head_from_yaml("upernet_r50", D32)
    assert isinstance(head, UPerHead) and head.in_channels == [8, 12, 16, 24]
    assert [c.in_channels for c in head.lateral_convs] == [8, 12, 16]
    assert len(head.fpn_convs) == 3 and head.fpn_bottleneck.in_channels == 4 * 16
    assert head.bottleneck.in_channels == 24 + 4 * 16
    assert "psp_modules.0.1.weight" in head.state_dict()
    logits, _ = head(_feats(D32, h=64, w=96))
    assert logits.shape == (2, 19, 16, 24) and head.common_stride == 4
    with pytest.raises(ValueError, match="multiple_select"):
        UPerHead(D32, in_features=list(D32), input_transform="resize_concat", num_classes=3,
                 channels=8)


def test_upernet_base_config_is_not_dilated():
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/upernet_r50.yaml")
    assert list(cfg.MODEL.RESNETS.STAGE_STRIDES) == [1, 2, 2, 2]
    assert list(cfg.MODEL.RESNETS.STAGE_DILATIONS) == [1, 1, 1, 1]
    assert cfg.MODEL.AUX_HEAD.IN_FEATURES == ["res4"] and cfg.MODEL.AUX_HEAD.CONVS_DIM == 256


_UPER_OPTS = ["MODEL.RESNETS.STAGE_STRIDES", [1, 2, 2, 2],
              "MODEL.RESNETS.STAGE_DILATIONS", [1, 1, 1, 1],
              "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res3", "res4", "res5"],
              "MODEL.SEM_SEG_HEAD.INPUT_TRANSFORM", "multiple_select"]


@pytest.mark.parametrize("head,opts", [
    ("PSPHead", []), ("ASPPHead", []), ("DepthwiseSeparableASPPHead", []), ("UPerHead", _UPER_OPTS),
])
def test_one_training_step_reaches_every_parameter(head, opts):
    # These heads have no zero-initialised layer, so every parameter gets a gradient at init;
    # the backbone's (mmseg's zero_init_residual: each residual branch gated at init) is off here.
    opts = list(opts) + ["MODEL.RESNETS.ZERO_INIT_RESIDUAL", False]
    model = build_model(tiny_cfg(head=head, opts=opts)).train()
    losses = model(random_batch())
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    sum(losses.values()).backward()
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not dead, dead
    model.eval()
    with torch.no_grad():
        out = model(random_batch(n=1, h=48, w=56))
    assert out[0]["sem_seg"].shape == (5, 48, 56)
