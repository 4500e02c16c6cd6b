"""HRNetV2 backbone, OCRHead and the two-stage CascadeEncoderDecoder (OCRNet)."""
import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import (
    META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, build_backbone, build_model,
)

from common import REPO_CONFIGS, get_d2seg_cfg, random_batch, tiny_cfg
from d2seg.checkpoint.mmseg import convert_mmseg_key
from d2seg.modeling.heads.ocr import OCRHead, SpatialGatherModule
from d2seg.modeling.meta_arch.cascade import CascadeEncoderDecoder

HR = ["hr1", "hr2", "hr3", "hr4"]


def _cfg(yaml, opts=()):
    return get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml",
                         ["MODEL.HRNET.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
                          "MODEL.CASCADE_HEAD.NORM", "BN", *opts])


def tiny_ocr_cfg(num_classes=5):
    """OCRNet on an HRNet with one block and one module per stage and narrow branches."""
    return _cfg("ocrnet_hr18", [
        "MODEL.HRNET.STAGE1_CHANNELS", 8, "MODEL.HRNET.BRANCH_CHANNELS", [4, 8, 8, 8],
        "MODEL.HRNET.NUM_MODULES", [1, 1, 1, 1], "MODEL.HRNET.NUM_BLOCKS", [1, 1, 1, 1],
        "MODEL.CASCADE_HEAD.CONVS_DIM", 28, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
        "MODEL.OCR_HEAD.OCR_CHANNELS", 8, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes,
    ])


@pytest.mark.parametrize("yaml,channels,modules,blocks", [
    ("fcn_hr18s", [18, 36, 72, 144], [1, 1, 3, 2], 2),
    ("fcn_hr18", [18, 36, 72, 144], [1, 1, 4, 3], 4),
    ("fcn_hr48", [48, 96, 192, 384], [1, 1, 4, 3], 4),
])
def test_hrnet_variants_shapes(yaml, channels, modules, blocks):
    cfg = _cfg(yaml)
    backbone = build_backbone(cfg).eval()
    shapes = backbone.output_shape()
    assert list(shapes) == HR
    assert [s.channels for s in shapes.values()] == channels
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert [len(backbone.layer1)] + [len(getattr(backbone, f"stage{s}")) for s in (2, 3, 4)] == \
        [blocks, *modules[1:]]
    assert all(len(b) == blocks for b in backbone.stage4[0].branches)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 32, 64))
    for name, shape in shapes.items():
        assert feats[name].shape == (1, shape.channels, 32 // shape.stride, 64 // shape.stride)
    # the FCN head reads all four branches resized to stride 4, with CONVS_DIM = their sum
    assert cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM == sum(channels)


def test_hrnet_odd_sizes_and_out_features():
    cfg = tiny_ocr_cfg()
    cfg.MODEL.HRNET.OUT_FEATURES = ["hr1", "hr3"]
    backbone = build_backbone(cfg)
    feats = backbone(torch.randn(1, 3, 50, 70))
    assert list(feats) == ["hr1", "hr3"] == list(backbone.output_shape())
    assert feats["hr1"].shape[-2:] == (13, 18) and feats["hr3"].shape[-2:] == (4, 5)
    cfg.MODEL.HRNET.OUT_FEATURES = ["res5"]
    with pytest.raises(ValueError, match="res5"):
        build_backbone(cfg)


def test_hrnet_module_names_are_mmseg():
    """mmseg's HRNet keys load unchanged (is_resnet=False)."""
    keys = build_backbone(_cfg("fcn_hr18s")).state_dict().keys()
    for k in ["conv1.weight", "bn1.running_var", "conv2.weight", "bn2.weight",
              "layer1.0.conv3.weight", "layer1.0.bn3.bias", "layer1.0.downsample.0.weight",
              "layer1.0.downsample.1.running_mean", "transition1.0.0.weight",
              "transition1.1.0.0.weight", "transition1.1.0.1.weight", "transition3.3.0.0.weight",
              "stage2.0.branches.1.1.conv2.weight", "stage4.1.branches.3.1.bn2.weight",
              "stage4.1.fuse_layers.0.3.1.weight",  # 1x1 conv + BN (+ upsampling)
              "stage4.1.fuse_layers.3.0.2.0.weight",  # 3 x (3x3/2 conv + BN)
              "stage4.1.fuse_layers.3.0.1.1.running_var"]:
        assert k in keys, k
        assert convert_mmseg_key("backbone." + k, is_resnet=False) == "backbone." + k
    assert "transition2.0.0.weight" not in keys  # unchanged branches have no transition


def test_cascade_training_runs_stage0_twice_and_inference_once():
    assert META_ARCH_REGISTRY.get("CascadeEncoderDecoder") is CascadeEncoderDecoder
    assert SEM_SEG_HEADS_REGISTRY.get("OCRHead") is OCRHead
    model = build_model(tiny_ocr_cfg())
    assert model.cascade_head.loss_weight == pytest.approx(0.4)
    assert not model.auxiliary_heads and model.decode_head.dropout is None
    calls = []
    model.cascade_head.register_forward_hook(lambda m, i, o: calls.append(m.training))
    losses = model(random_batch(h=32, w=32))
    assert set(losses) == {"loss_cascade", "loss_sem_seg"}
    assert calls == [True, True]  # the loss pass, then mmseg's forward_test pass

    calls.clear()
    model.eval()
    with torch.no_grad():
        out = model(random_batch(n=1, h=40, w=36))
    assert calls == [False]
    assert len(out) == 1 and out[0]["sem_seg"].shape == (5, 40, 36)


def test_stage1_gradient_reaches_stage0_and_every_parameter():
    model = build_model(tiny_ocr_cfg()).train()
    losses = model(random_batch(h=32, w=32))
    # stage 1's loss alone also trains stage 0 through the (undetached) logits it gathers with
    losses["loss_sem_seg"].backward(retain_graph=True)
    assert model.cascade_head.conv_seg.weight.grad.abs().sum() > 0
    model.zero_grad()
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, no_grad


def test_ocr_layers_and_no_zero_init():
    head = build_model(tiny_ocr_cfg()).decode_head
    block = head.object_context_block
    assert head.bottleneck.kernel_size == (3, 3) and block.bottleneck.in_channels == 32
    assert len(block.key_project) == 2 and len(block.query_project) == 2
    assert block.key_project is not block.query_project
    assert block.value_project.out_channels == 8 and block.out_project.out_channels == 16
    # mmseg's constant_init(out_project, 0) is a no-op on a ConvModule: nothing starts at zero
    assert block.out_project.weight.abs().sum() > 0
    for k in ["object_context_block.key_project.1.conv.weight",
              "object_context_block.out_project.bn.running_var",
              "object_context_block.bottleneck.conv.weight", "bottleneck.bn.weight",
              "conv_seg.bias"]:
        d2_key = convert_mmseg_key("decode_head.1." + k, is_cascade=True, is_resnet=False)
        assert d2_key[len("decode_head."):] in head.state_dict(), k


def test_spatial_gather_is_softmax_weighted_class_centres():
    feats, probs = torch.randn(2, 6, 4, 5), torch.randn(2, 3, 4, 5)
    out = SpatialGatherModule(scale=0.5)(feats, probs)
    w = (0.5 * probs.flatten(2)).softmax(-1)
    expected = torch.einsum("nkp,ncp->nck", w, feats.flatten(2))
    assert out.shape == (2, 6, 3, 1)
    assert torch.allclose(out[..., 0], expected, atol=1e-6)


def test_ocr_errors():
    shape = {"res5": ShapeSpec(channels=16, stride=8)}
    head = OCRHead(shape, in_features=["res5"], num_classes=3, channels=8, norm="BN",
                   ocr_channels=4)
    feats = {"res5": torch.randn(1, 16, 6, 6)}
    with pytest.raises(ValueError, match="prev_output"):
        head(feats)
    with pytest.raises(ValueError, match="differ in size"):
        head(feats, prev_output=torch.randn(1, 3, 3, 3))
    assert head(feats, prev_output=torch.randn(1, 3, 6, 6))[0].shape == (1, 3, 6, 6)
    with pytest.raises(ValueError, match="SCALE"):
        OCRHead(shape, in_features=["res5"], num_classes=3, channels=8, ocr_channels=4, scale=2)
    cfg = tiny_ocr_cfg()
    cfg.MODEL.CASCADE_HEAD.NAME = ""
    with pytest.raises(ValueError, match="CASCADE_HEAD"):
        build_model(cfg)


def test_ocrnet_r50_d8_yaml_builds_resnet_cascade():
    cfg = tiny_cfg(head="OCRHead", aux=False, opts=[
        "MODEL.META_ARCHITECTURE", "CascadeEncoderDecoder", "MODEL.CASCADE_HEAD.NAME", "FCNHead",
        "MODEL.CASCADE_HEAD.NORM", "BN", "MODEL.CASCADE_HEAD.CONVS_DIM", 16,
        "MODEL.OCR_HEAD.OCR_CHANNELS", 8,
    ])
    model = build_model(cfg)
    assert model.cascade_head.in_features == ["res4"] and model.decode_head.in_features == ["res5"]
    assert set(model(random_batch(h=32, w=32))) == {"loss_cascade", "loss_sem_seg"}
    full = _cfg("ocrnet_r50-d8")
    assert full.MODEL.CASCADE_HEAD.IN_FEATURES == ["res4"] and full.MODEL.AUX_HEAD.NAME == ""
    assert full.MODEL.SEM_SEG_HEAD.DROPOUT == pytest.approx(0.1)
