"""Fast-SCNN, MobileNetV3 + LR-ASPP, BiSeNetV2 and ERFNet beyond parity
(tests/parity/test_parity_realtime.py): LR-ASPP's input-size limit, outputs and losses, config
errors, and ONNX export with dynamic N, H, W."""
import pytest
import torch
from torch import nn

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from test_segmenter_dpt import DPT, SEGMENTER

BN = ["MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN", "MODEL.AUX_HEAD_2.NORM", "BN"]
FAST_SCNN = ("fast_scnn", ["MODEL.FAST_SCNN.NORM", "BN", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5])
# BiSeNetV2 at a quarter of its widths (heads too): the same graph, fast on a CPU
BISENETV2 = ("bisenetv2", [
    "MODEL.AUX_HEAD_3.NORM", "BN", "MODEL.AUX_HEAD_4.NORM", "BN",
    "MODEL.BISENETV2.DETAIL_CHANNELS", [16, 16, 32], "MODEL.BISENETV2.SEMANTIC_CHANNELS",
    [4, 8, 16, 32], "MODEL.BISENETV2.BGA_CHANNELS", 32, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 64,
    "MODEL.AUX_HEAD.CONVS_DIM", 4, "MODEL.AUX_HEAD_2.CONVS_DIM", 16,
    "MODEL.AUX_HEAD_3.CONVS_DIM", 32, "MODEL.AUX_HEAD_4.CONVS_DIM", 64,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5])
# CGNet at a quarter of its widths and depth (the same graph); 19 classes (the class weights)
CGNET = ("cgnet", [
    "MODEL.CGNET.NORM", "BN", "MODEL.CGNET.NUM_CHANNELS", [8, 16, 32], "MODEL.CGNET.NUM_BLOCKS",
    [2, 3], "MODEL.CGNET.REDUCTIONS", [4, 8], "MODEL.SEM_SEG_HEAD.CONVS_DIM", 64])
# ERFNet at a quarter of its widths and fewer blocks (dilations kept): the same graph
ERFNET = ("erfnet_fcn", [
    "MODEL.ERFNET.ENC_DOWNSAMPLE_CHANNELS", [4, 16, 32], "MODEL.ERFNET.ENC_STAGE_NON_BOTTLENECKS",
    [1, 4], "MODEL.ERFNET.DEC_NON_BOTTLENECK_CHANNELS", [16, 4],
    "MODEL.ERFNET.DEC_STAGES_NON_BOTTLENECK", [1, 1], "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5])
LRASPP_SMALL = ("lraspp_m-v3-d8", [
    "MODEL.MOBILENET_V3.NORM", "BN", "MODEL.MOBILENET_V3.ARCH", "small",
    "MODEL.MOBILENET_V3.OUT_FEATURES", ["layer0", "layer1", "layer12"],
    "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["layer0", "layer1", "layer12"],
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5])

# MobileNetV2 + FCN at a quarter of its widths (strides and dilations kept): the same graph
FCN_MV2 = ("fcn_m-v2-d8", [
    "MODEL.MOBILENET_V2.NORM", "BN", "MODEL.MOBILENET_V2.WIDEN_FACTOR", 0.25,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.AUX_HEAD.CONVS_DIM", 8,
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5])


def _cfg(spec, opts=()):
    yaml, extra = spec
    return get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml", [*BN, *extra, *opts])


@torch.no_grad()
def _model(spec, opts=()):
    """Eval-mode model with random BN statistics and affine (BN folding is not the identity)."""
    model = build_model(_cfg(spec, opts))
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def test_lraspp_needs_392_px_and_says_so():
    model = _model(LRASPP_SMALL)
    with torch.no_grad():
        assert model.encode_decode(torch.randn(1, 3, 392, 400)).shape == (1, 5, 392, 400)
        with pytest.raises(ValueError, match=r"at least 49x49, got 48x50.*392 px"):
            model.encode_decode(torch.randn(1, 3, 384, 400))


def test_fast_scnn_outputs_and_losses():
    model = build_model(_cfg(FAST_SCNN))
    shapes = model.backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "higher_res": (64, 8), "lower_res": (128, 32), "fusion": (128, 8)}
    assert [h.in_features for h in model.auxiliary_heads] == [["lower_res"], ["higher_res"]]
    assert all(h.use_sigmoid for h in [model.decode_head, *model.auxiliary_heads])
    label = torch.randint(0, 5, (2, 64, 64))
    label[:, :8] = 255
    losses = model([{"image": torch.rand(3, 64, 64) * 255, "sem_seg": y} for y in label])
    assert set(losses) == {"loss_sem_seg", "loss_aux", "loss_aux_2"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_bisenetv2_outputs_and_losses():
    model = build_model(_cfg(BISENETV2))
    shapes = model.backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "bga": (32, 8), "stage1": (4, 4), "stage2": (8, 8), "stage3": (16, 16),
        "stage4": (32, 32)}
    assert [h.in_features for h in model.auxiliary_heads] == [[f"stage{i}"] for i in range(1, 5)]
    # mmseg's backbone ignores its SyncBN norm_cfg: plain BN even where SyncBN is available
    assert all(type(m) is nn.BatchNorm2d for m in model.backbone.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    label = torch.randint(0, 5, (2, 64, 64))
    label[:, :8] = 255
    losses = model([{"image": torch.rand(3, 64, 64) * 255, "sem_seg": y} for y in label])
    assert set(losses) == {"loss_sem_seg", "loss_aux", "loss_aux_2", "loss_aux_3", "loss_aux_4"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_bisenetv2_config_errors_name_the_key():
    with pytest.raises(ValueError, match="MODEL.AUX_HEAD_3.NAME is set but MODEL.AUX_HEAD_2.NAME"):
        build_model(_cfg(BISENETV2, ["MODEL.AUX_HEAD_2.NAME", ""]))
    with pytest.raises(ValueError, match="must equal BGA_CHANNELS"):
        build_model(_cfg(BISENETV2, ["MODEL.BISENETV2.BGA_CHANNELS", 48]))
    with pytest.raises(ValueError, match="DETAIL_CHANNELS=.* one value fewer"):
        build_model(_cfg(BISENETV2, ["MODEL.BISENETV2.DETAIL_CHANNELS", [16, 32]]))
    with pytest.raises(ValueError, match="OUT_FEATURES .*'stage5'"):
        build_model(_cfg(BISENETV2, ["MODEL.BISENETV2.OUT_FEATURES", ["bga", "stage5"]]))


def test_cgnet_outputs_init_and_losses():
    model = build_model(_cfg(CGNET))
    shapes = model.backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "stage0": (8 + 3, 2), "stage1": (2 * 16 + 3, 4), "stage2": (64, 8)}
    # mmseg's init_cfg: PReLU slopes 0, norms 1/0, Kaiming fan_out (std sqrt(2 / fan_out))
    prelus = [m for m in model.backbone.modules() if isinstance(m, nn.PReLU)]
    assert prelus and all((m.weight == 0).all() for m in prelus)
    fc = model.backbone.level2[1].f_glo.fc[0]
    assert abs(fc.weight.std().item() / (2 / fc.out_features) ** 0.5 - 1) < 0.3
    assert model.decode_head.class_weight.shape == (19,)
    # its own state_dict is not taken for an mmseg one (whose decode head has no ConvModule)
    from d2seg.checkpoint.convert import looks_like_mmseg, mmseg_layout
    assert not looks_like_mmseg(model.state_dict())
    assert not mmseg_layout({"backbone.stem.0.conv.weight": 0})["is_resnet"]
    assert mmseg_layout({"backbone.stem.0.weight": 0})["is_resnet"]  # ResNetV1c's stem
    label = torch.randint(0, 19, (2, 64, 64))
    label[:, :8] = 255
    losses = model([{"image": torch.rand(3, 64, 64) * 255, "sem_seg": y} for y in label])
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])


def test_cgnet_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"NUM_CHANNELS=\[8, 15, 32\] must be even"):
        build_model(_cfg(CGNET, ["MODEL.CGNET.NUM_CHANNELS", [8, 15, 32]]))
    with pytest.raises(ValueError, match=r"NUM_BLOCKS=\[2\] needs 2 positive values"):
        build_model(_cfg(CGNET, ["MODEL.CGNET.NUM_BLOCKS", [2]]))
    with pytest.raises(ValueError, match="CONVS_DIM"):  # FCNHead without convs: width 2 x 32
        build_model(_cfg(CGNET, ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 32]))


def test_erfnet_outputs_and_losses():
    model = build_model(_cfg(ERFNET))
    shapes = model.backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {"decoder": (4, 2)}
    assert not model.auxiliary_heads
    enc = model.backbone.encoder
    assert [b.convs_layers[5].dilation for b in enc[-4:]] == [(d, 1) for d in (2, 4, 8, 16)]
    label = torch.randint(0, 5, (2, 66, 98))
    label[:, :8] = 255
    losses = model([{"image": torch.rand(3, 66, 98) * 255, "sem_seg": y} for y in label])
    assert set(losses) == {"loss_sem_seg"}
    assert torch.isfinite(losses["loss_sem_seg"]) and losses["loss_sem_seg"] > 0


def test_erfnet_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"ENC_STAGE_NON_BOTTLENECKS\[-1\]=3 must be a multiple"):
        build_model(_cfg(ERFNET, ["MODEL.ERFNET.ENC_STAGE_NON_BOTTLENECKS", [1, 3]]))
    with pytest.raises(ValueError, match="ENC_STAGE_NON_BOTTLENECKS=.* one value fewer"):
        build_model(_cfg(ERFNET, ["MODEL.ERFNET.ENC_STAGE_NON_BOTTLENECKS", [4]]))
    with pytest.raises(ValueError, match="DEC_NON_BOTTLENECK_CHANNELS=.* one value fewer"):
        build_model(_cfg(ERFNET, ["MODEL.ERFNET.DEC_NON_BOTTLENECK_CHANNELS", [4]]))
    with pytest.raises(ValueError, match="must widen its input, got 16 -> 16"):
        build_model(_cfg(ERFNET, ["MODEL.ERFNET.ENC_DOWNSAMPLE_CHANNELS", [4, 16, 16]]))


def test_mobilenet_v2_outputs_init_and_losses():
    model = build_model(_cfg(FCN_MV2))
    shapes = model.backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "layer2": (8, 4), "layer3": (8, 8), "layer5": (24, 8), "layer7": (80, 8)}
    bb = model.backbone
    # mmseg: a layer's dilation applies to its first block only; depthwise padding = dilation
    assert [blk.conv[1].dilation for blk in bb.layer6] == [(4, 4), (1, 1), (1, 1)]
    assert [blk.conv[1].padding for blk in bb.layer6] == [(4, 4), (1, 1), (1, 1)]
    assert len(bb.layer1[0].conv) == 2 and not bb.layer2[0].use_res_connect  # no expand; stride 2
    assert bb.layer2[1].use_res_connect
    # mmseg's init_cfg: Kaiming fan_out (std sqrt(2 / fan_out)), norms 1/0
    w = bb.layer7[0].conv[0].weight
    assert abs(w.std().item() / (2 / w.shape[0]) ** 0.5 - 1) < 0.2
    assert all((m.weight == 1).all() and (m.bias == 0).all()
               for m in bb.modules() if isinstance(m, nn.BatchNorm2d))
    from d2seg.checkpoint.convert import looks_like_mmseg
    assert not looks_like_mmseg(model.state_dict())
    label = torch.randint(0, 5, (2, 66, 98))
    label[:, :8] = 255
    losses = model([{"image": torch.rand(3, 66, 98) * 255, "sem_seg": y} for y in label])
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_mobilenet_v2_checkpoint_is_not_taken_for_a_resnet():
    from d2seg.checkpoint.convert import mmseg_layout
    from d2seg.checkpoint.mmseg import convert_mmseg_key
    mv2 = {"backbone.conv1.conv.weight": 0, "backbone.conv1.bn.weight": 0,
           "backbone.layer1.0.conv.0.conv.weight": 0, "backbone.layer1.0.conv.1.bn.bias": 0}
    layout = mmseg_layout(mv2)
    assert not layout["is_resnet"]
    assert sorted(convert_mmseg_key(k, **layout) for k in mv2) == [
        "backbone.conv1.norm.weight", "backbone.conv1.weight",
        "backbone.layer1.0.conv.0.weight", "backbone.layer1.0.conv.1.norm.bias"]
    # ResNets still are: V1b stem conv1 / bn1, and blocks layer1.N.conv1 / bn1 / downsample
    assert mmseg_layout({"backbone.conv1.weight": 0})["is_resnet"]
    assert mmseg_layout({"backbone.layer1.0.conv1.weight": 0})["is_resnet"]
    assert mmseg_layout({"backbone.layer1.0.downsample.0.weight": 0})["is_resnet"]


def test_mobilenet_v2_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"STRIDES=\[1, 2, 3, 1, 1, 1, 1\] must be 7 values"):
        build_model(_cfg(FCN_MV2, ["MODEL.MOBILENET_V2.STRIDES", [1, 2, 3, 1, 1, 1, 1]]))
    with pytest.raises(ValueError, match=r"DILATIONS=\[1, 1\] must be 7"):
        build_model(_cfg(FCN_MV2, ["MODEL.MOBILENET_V2.DILATIONS", [1, 1]]))
    with pytest.raises(ValueError, match="WIDEN_FACTOR=0.0 must be > 0"):
        build_model(_cfg(FCN_MV2, ["MODEL.MOBILENET_V2.WIDEN_FACTOR", 0.0]))
    with pytest.raises(ValueError, match=r"OUT_FEATURES \['layer8'\]"):
        build_model(_cfg(FCN_MV2, ["MODEL.MOBILENET_V2.OUT_FEATURES", ["layer8"]]))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="MODEL.AUX_HEAD_2.NAME is set but MODEL.AUX_HEAD.NAME"):
        build_model(_cfg(FAST_SCNN, ["MODEL.AUX_HEAD.NAME", ""]))
    with pytest.raises(ValueError, match="LOSS_USE_SIGMOID does not take CLASS_WEIGHT"):
        build_model(_cfg(FAST_SCNN, ["MODEL.SEM_SEG_HEAD.CLASS_WEIGHT", [1.0] * 5]))
    with pytest.raises(ValueError, match="ARCH='tiny'"):
        build_model(_cfg(LRASPP_SMALL, ["MODEL.MOBILENET_V3.ARCH", "tiny"]))
    with pytest.raises(ValueError, match="BRANCH_CHANNELS"):
        build_model(_cfg(LRASPP_SMALL, ["MODEL.LRASPP_HEAD.BRANCH_CHANNELS", [32]]))


@pytest.mark.parametrize("spec,sizes", [
    (FAST_SCNN, [(1, 64, 96), (2, 72, 104)]),
    # TF "SAME" padding of the stride-2 convs differs at odd / even sizes: both are checked
    (LRASPP_SMALL, [(1, 400, 416), (2, 393, 459)]),
    (BISENETV2, [(1, 64, 96), (2, 67, 101)]),
    (CGNET, [(1, 64, 96), (2, 67, 101)]),
    # odd sizes take the downsamplers' resize of the pool to the conv's size
    (ERFNET, [(1, 64, 96), (2, 65, 97)]),
    (FCN_MV2, [(1, 64, 96), (2, 67, 101)]),
    # ViT heads: the pos_embed grid's own size and others (the resize is in the graph)
    (SEGMENTER, [(1, 64, 64), (2, 67, 101)]),
    (DPT, [(1, 64, 96), (2, 67, 101)]),
], ids=["fast_scnn", "lraspp_small", "bisenetv2", "cgnet", "erfnet", "fcn_m-v2", "segmenter",
        "dpt"])
def test_onnx_dynamic_export_matches_pytorch(spec, sizes, tmp_path):
    pytest.importorskip("onnxruntime")
    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    module = SegmentationExportModule(plain_for_export(_model(spec)), labels=False).eval()
    path = str(tmp_path / "model.onnx")
    n, h, w = sizes[0]
    export(module, "onnx", path, torch.rand(n, 3, h, w) * 255, dynamic=True)
    ok, figures = verify_export(module, "onnx", path, sizes)
    assert ok, figures
