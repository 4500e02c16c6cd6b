"""STDC beyond the logits parity (tests/parity/test_parity_stdc.py): ImageNet weights in the
official and mmseg layouts through MODEL.WEIGHTS (as stdc2mmseg.py converts them), STDCHead's
boundary target, a training step, config errors and ONNX export with dynamic H x W."""
import re

import pytest
import torch
from torch import nn

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint.backbones import convert_backbone_state_dict, detect_backbone_format
from d2seg.modeling.heads.stdc import boundary_targets
from test_checkpoint_formats import load_logged, one_thread  # noqa: F401  (autouse fixture)
from test_realtime import _model as random_bn_model  # eval mode, random BN statistics

YAML = REPO_CONFIGS / "_base_/models/stdc.yaml"
CHANNELS = [8, 16, 32, 64, 128]  # stages 3-5 divisible by 2 ** (NUM_CONVS - 1)
TINY_OPTS = ["MODEL.STDC.CHANNELS", CHANNELS, "MODEL.STDC.OUT_CHANNELS", 16,
             "MODEL.STDC.FFM_OUT_CHANNELS", 32, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5, "MODEL.AUX_HEAD.CONVS_DIM", 8,
             "MODEL.AUX_HEAD_2.CONVS_DIM", 8, "MODEL.AUX_HEAD_3.CONVS_DIM", 8]
# official STDCNet ``features.{i}`` -> mmseg ``stages.{...}`` (written out from the architecture)
STAGES = {
    "STDCNet1": ["0", "1"] + [f"{s}.{j}" for s, n in ((2, 2), (3, 2), (4, 2)) for j in range(n)],
    "STDCNet2": ["0", "1"] + [f"{s}.{j}" for s, n in ((2, 4), (3, 5), (4, 3)) for j in range(n)],
}


def tiny_model(opts=()):
    return build_model(get_d2seg_cfg(YAML, TINY_OPTS + list(opts)))


def _official_name(rest):
    """d2seg's name inside one STDCNet module -> the official one."""
    m = re.match(r"^downsample\.(norm\.)?(.*)$", rest)
    if m:  # avd_layer = Sequential(depthwise conv, BN)
        return f"avd_layer.{1 if m[1] else 0}.{m[2]}"
    prefix = ""
    m = re.match(r"^layers\.(\d+)\.(.*)$", rest)
    if m:
        prefix, rest = f"conv_list.{m[1]}.", m[2]
    return prefix + ("bn." + rest[len("norm."):] if rest.startswith("norm.") else "conv." + rest)


def official_stdc_state_dict(stdc_type="STDCNet1", seed=0):
    """Random weights named as STDC-Seg's ImageNet ``STDCNet813``/``STDCNet1446`` (ConvX
    ``conv``/``bn``, CatBottleneck ``conv_list``/``avd_layer``), shaped from the tiny model's
    STDCNet, with the classifier (``conv_last``, ``fc``, ``bn``, ``linear``) and one of the
    duplicate ``x8`` views the official files hold."""
    g = torch.Generator().manual_seed(seed)
    source = tiny_model(["MODEL.STDC.TYPE", stdc_type]).backbone.backbone.state_dict()
    index = {s: i for i, s in enumerate(STAGES[stdc_type])}
    sd = {}
    for k, v in source.items():
        stage, rest = re.match(r"^stages\.(\d+(?:\.\d+)?)\.(.*)$", k).groups()
        rest = _official_name(rest)
        if rest.endswith("num_batches_tracked"):
            value = torch.tensor(5)
        elif rest.endswith("running_var"):
            value = torch.rand(v.shape, generator=g) + 0.5
        else:
            value = torch.randn(v.shape, generator=g) * 0.3
        sd[f"features.{index[stage]}.{rest}"] = value
    sd["x8.0.conv_list.0.conv.weight"] = sd["features.2.conv_list.0.conv.weight"]
    sd["conv_last.conv.weight"] = torch.randn(1024, CHANNELS[-1], 1, 1, generator=g)
    sd["conv_last.bn.weight"] = torch.ones(1024)
    sd["fc.weight"] = torch.randn(1024, 1024, generator=g)
    sd["bn.weight"] = torch.ones(1024)
    sd["linear.weight"] = torch.randn(10, 1024, generator=g)
    return sd


@pytest.mark.parametrize("stdc_type", ["STDCNet1", "STDCNet2"])
def test_official_stdc_weights_load_into_stdcnet(stdc_type, tmp_path):
    sd = official_stdc_state_dict(stdc_type)
    assert detect_backbone_format(sd) == "stdc_official"
    torch.save({"state_dict": sd}, tmp_path / "stdc.pth")
    model = tiny_model(["MODEL.STDC.TYPE", stdc_type])
    kept = {k: v.clone() for k, v in model.state_dict().items()
            if not k.startswith("backbone.backbone.")}
    ckpt, log = load_logged(model, tmp_path / "stdc.pth")
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    assert "STDC (official)" in log
    assert sorted(report.skipped) == sorted(
        ["x8.0.conv_list.0.conv.weight", "conv_last.conv.weight", "conv_last.bn.weight",
         "fc.weight", "bn.weight", "linear.weight"])
    state = model.state_dict()
    # the STDCNet comes from the file; the context path and the heads keep their init
    assert set(report.loaded) == {k for k in state if k.startswith("backbone.backbone.")}
    assert any(k.startswith("backbone.arms.") for k in report.kept_init)
    assert all(torch.equal(v, state[k]) for k, v in kept.items())
    last = STAGES[stdc_type].index("4.1")
    assert torch.equal(state["backbone.backbone.stages.0.weight"], sd["features.0.conv.weight"])
    assert torch.equal(state["backbone.backbone.stages.2.0.downsample.norm.running_var"],
                       sd["features.2.avd_layer.1.running_var"])
    assert torch.equal(state["backbone.backbone.stages.4.1.layers.3.norm.bias"],
                       sd[f"features.{last}.conv_list.3.bn.bias"])


def test_official_stdc_conversion_equals_mmseg_stdc2mmseg():
    """d2seg's conversion against mmseg's own tools/model_converters/stdc2mmseg.py, and the
    converted STDCNet's outputs against mmseg's STDCNet with its conversion."""
    mmseg_peer = pytest.importorskip("mmseg_peer")
    pytest.importorskip("mmseg")
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models.backbones import STDCNet

    stdc2mmseg = mmseg_peer.mmseg_tool("model_converters/stdc2mmseg.py")

    for stdc_type, name in (("STDCNet1", "STDC1"), ("STDCNet2", "STDC2")):
        sd = official_stdc_state_dict(stdc_type, seed=1)
        # stdc2mmseg also keeps the x8 view's renamed keys: not STDCNet's, mmseg ignores them
        theirs = {k: v for k, v in stdc2mmseg.convert_stdc(sd, name).items()
                  if k.startswith("stages.")}
        ours, _, _ = convert_backbone_state_dict(sd)
        ref = STDCNet(stdc_type, 3, CHANNELS, "cat", dict(type="BN"), dict(type="ReLU")).eval()
        ref.load_state_dict(theirs, strict=True)
        model = tiny_model(["MODEL.STDC.TYPE", stdc_type]).eval()
        model.load_state_dict(ours, strict=False)
        assert set(ours) == {k for k in model.state_dict() if k.startswith("backbone.backbone.")}
        # and mmseg's converted file (stdc1_20220308-5368626c.pth's layout) loads the same
        assert detect_backbone_format(theirs) == "stdc"
        again, _, name_mmseg = convert_backbone_state_dict(theirs)
        assert name_mmseg == "STDC (mmseg)"
        assert set(again) == set(ours) and all(torch.equal(again[k], ours[k]) for k in ours)
        x = torch.randn(1, 3, 75, 101)
        with torch.no_grad():
            expected, got = ref(x), model.backbone.backbone(x)
        for e, o in zip(expected, got):
            torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-4 * e.abs().max())


def test_official_stdc_with_unknown_depth_says_so():
    sd = {k: v for k, v in official_stdc_state_dict().items() if not k.startswith("features.7.")}
    with pytest.raises(ValueError, match=r"features.\{i\} with 7 modules.*STDC1's 8 or STDC2's 14"):
        convert_backbone_state_dict(sd)


def test_boundary_target_marks_the_edges_of_a_region():
    """A 16x16 square of class 3 in class 0: the target is 1 along the square's inner border,
    0 deep inside it and far outside (mmseg's clamp keeps the higher side of an edge only)."""
    label = torch.zeros(1, 48, 64, dtype=torch.long)
    label[0, 16:32, 24:40] = 3
    lap = torch.tensor([-1., -1, -1, -1, 8, -1, -1, -1, -1]).view(1, 1, 3, 3)
    fusion = torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)
    t = boundary_targets(label, lap, fusion, 0.1)[0]
    assert t.dtype == torch.long and set(t.unique().tolist()) == {0, 1}
    ring = torch.zeros_like(t, dtype=torch.bool)
    ring[16:32, 24:40] = True
    ring[17:31, 25:39] = False
    assert t[ring].all()
    assert not t[20:28, 28:36].any() and not t[:12].any() and not t[:, :20].any()
    # ignored pixels (255) are labels like any other: their region's border is a boundary
    label[0, 40:, 50:] = 255
    assert boundary_targets(label, lap, fusion, 0.1)[0, 40, 55] == 1


def test_stdc_trains_with_the_detail_loss():
    model = tiny_model()
    shapes = model.backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "detail": (32, 8), "context16": (16, 16), "context8": (16, 8), "fusion": (32, 8)}
    assert [type(h).__name__ for h in model.auxiliary_heads] == ["FCNHead", "FCNHead",
                                                                 "STDCHead"]
    assert model.auxiliary_heads[2].conv_seg.out_channels == 2
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (2, 1, 8, 8), generator=g).float()
    label = nn.functional.interpolate(label, size=(64, 96), mode="nearest")[:, 0].long()
    label[:, :8] = 255
    losses = model([{"image": torch.rand(3, 64, 96, generator=g) * 255, "sem_seg": y}
                    for y in label])
    assert set(losses) == {"loss_sem_seg", "loss_aux", "loss_aux_2", "loss_aux_3",
                           "loss_aux_3_dice"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.backbone.stages[0].weight.grad.abs().sum() > 0


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="MODEL.STDC.TYPE='STDCNet3'"):
        tiny_model(["MODEL.STDC.TYPE", "STDCNet3"])
    with pytest.raises(ValueError, match=r"MODEL.STDC.CHANNELS=\[8, 16, 32, 64\] needs 5"):
        tiny_model(["MODEL.STDC.CHANNELS", [8, 16, 32, 64]])
    with pytest.raises(ValueError, match="MODEL.STDC.BOTTLENECK_TYPE='sum'"):
        tiny_model(["MODEL.STDC.BOTTLENECK_TYPE", "sum"])
    with pytest.raises(ValueError, match="BOUNDARY_THRESHOLD=1.0 must be in"):
        tiny_model(["MODEL.STDC_HEAD.BOUNDARY_THRESHOLD", 1.0])
    with pytest.raises(ValueError, match="MODEL.STDC_HEAD.NUM_CLASSES=3 must be 2"):
        tiny_model(["MODEL.STDC_HEAD.NUM_CLASSES", 3])


@pytest.mark.parametrize("opts", [[], ["MODEL.STDC.TYPE", "STDCNet2"]], ids=["stdc1", "stdc2"])
def test_onnx_dynamic_export_matches_pytorch(opts, tmp_path):
    pytest.importorskip("onnxruntime")
    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    model = random_bn_model(("stdc", TINY_OPTS), opts)
    module = SegmentationExportModule(plain_for_export(model), labels=False).eval()
    path = str(tmp_path / "model.onnx")
    sizes = [(1, 64, 96), (2, 75, 101)]  # odd: nearest upsampling to odd context sizes
    export(module, "onnx", path, torch.rand(sizes[0][0], 3, *sizes[0][1:]) * 255, dynamic=True)
    ok, figures = verify_export(module, "onnx", path, sizes)
    assert ok, figures
