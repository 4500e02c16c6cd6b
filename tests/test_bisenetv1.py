"""BiSeNetV1 beyond the logits parity (tests/parity/test_parity_bisenetv1.py): outputs and strides,
the from-scratch init, config errors, ImageNet ResNet weights (open-mmlab ResNetV1c and
torchvision layouts) through MODEL.WEIGHTS into the context path as mmseg's strict=False
Pretrained init loads them, a training step and ONNX export with dynamic H x W."""
import re

import pytest
import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from test_checkpoint_formats import load_logged, one_thread, v1c_to_d2seg  # noqa: F401
from test_realtime import _model as random_bn_model  # eval mode, random BN statistics

YAML = REPO_CONFIGS / "_base_/models/bisenetv1_r18-d32.yaml"
# ResNet-18 at width 16 (res4 64, res5 128); spatial[-1] + context[0] = context[1]
TINY_OPTS = ["MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
             "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
             "MODEL.BISENETV1.SPATIAL_CHANNELS", [8, 8, 8, 32],
             "MODEL.BISENETV1.CONTEXT_CHANNELS", [32, 64, 128], "MODEL.BISENETV1.OUT_CHANNELS", 48,
             "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5,
             "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.CONVS_DIM", 8,
             "MODEL.AUX_HEAD.NORM", "BN", "MODEL.AUX_HEAD_2.CONVS_DIM", 8,
             "MODEL.AUX_HEAD_2.NORM", "BN"]
CONTEXT = "backbone.context_path.backbone."


def tiny_model(opts=()):
    return build_model(get_d2seg_cfg(YAML, TINY_OPTS + list(opts)))


def test_outputs_and_strides():
    model = tiny_model().eval()
    shapes = model.backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "fusion": (48, 8), "context8": (32, 8), "context16": (32, 16)}
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 65, 97))
    # conv arithmetic (ceil at each stride-2 step): 33x49, 17x25, 9x13, 5x7
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "fusion": (1, 48, 9, 13), "context8": (1, 32, 9, 13), "context16": (1, 32, 5, 7)}
    assert model.decode_head.in_features == ["fusion"]
    assert [h.in_features for h in model.auxiliary_heads] == [["context8"], ["context16"]]


def test_mmseg_module_names():
    keys = set(tiny_model().state_dict())
    for k in ("backbone.spatial_path.layer4.norm.running_var",
              "backbone.context_path.arm16.atten_conv_layer.1.weight",
              "backbone.context_path.gap_conv.1.norm.weight",
              "backbone.context_path.conv_head32.weight",
              "backbone.ffm.conv1.weight", "backbone.ffm.conv_atten.0.norm.bias",
              CONTEXT + "stem.conv1.weight", CONTEXT + "res5.1.conv2.norm.weight"):
        assert k in keys, k


def test_sub_modules_use_plain_bn_whatever_the_resnet_norm():
    model = tiny_model(["MODEL.RESNETS.NORM", "FrozenBN"])
    resnet = model.backbone.context_path.backbone
    assert isinstance(resnet.stem.conv1.norm, FrozenBatchNorm2d)
    rest = [m for n, m in model.backbone.named_modules() if not n.startswith("context_path.backbone")]
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in rest)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in rest) == 4 + 2 * 2 + 3 + 2  # SP, ARMs, heads/gap, FFM


def test_init_from_scratch_is_mmsegs():
    """ConvModules: Kaiming normal (fan_out) without bias, norms 1/0; the ResNet as mmseg's
    ResNet: Kaiming fan_out, each block's last norm at 0 (zero_init_residual)."""
    torch.manual_seed(0)
    model = tiny_model()
    bb = model.backbone
    for conv in (bb.spatial_path.layer1, bb.context_path.conv_head16, bb.ffm.conv_atten[0],
                 bb.context_path.arm32.atten_conv_layer[1]):
        assert conv.bias is None
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std = conv.weight.std().item()
        assert 0.7 < std / (2 / fan_out) ** 0.5 < 1.3, std
        assert torch.all(conv.norm.weight == 1) and torch.all(conv.norm.bias == 0)
    resnet = bb.context_path.backbone
    assert torch.all(resnet.res3[0].conv2.norm.weight == 0)
    assert torch.all(resnet.res3[0].conv1.norm.weight == 1)


def test_config_errors_name_the_key():
    cases = [
        (["MODEL.BISENETV1.CONTEXT_CHANNELS", [32, 64, 256]],
         r"CONTEXT_CHANNELS=\[32, 64, 256\]: its last two values must be the ResNet's res4 and "
         r"res5 widths \[64, 128\]"),
        (["MODEL.BISENETV1.SPATIAL_CHANNELS", [8, 8, 8, 16]],
         r"SPATIAL_CHANNELS\[-1\] \+ CONTEXT_CHANNELS\[0\] = 16 \+ 32 must equal"),
        (["MODEL.BISENETV1.SPATIAL_CHANNELS", [8, 8, 32]], r"SPATIAL_CHANNELS=\[8, 8, 32\] needs 4"),
        (["MODEL.BISENETV1.CONTEXT_CHANNELS", [64, 128]], r"CONTEXT_CHANNELS=\[64, 128\] needs 3"),
        (["MODEL.BISENETV1.OUT_FEATURES", ["fuse"]], r"OUT_FEATURES=\['fuse'\] must be among"),
        (["MODEL.RESNETS.OUT_FEATURES", ["res2", "res5"]], r"lacks \['res3', 'res4'\]"),
        (["MODEL.RESNETS.STAGE_STRIDES", [1, 2, 1, 1]],
         r"strides \[8, 8, 8\] at res3..res5.*STAGE_STRIDES \[1, 2, 2, 2\]"),
        (["MODEL.RESNETS.DEPTH", 19], r"MODEL.RESNETS.DEPTH=19"),
    ]
    for opts, msg in cases:
        with pytest.raises(ValueError, match=msg):
            tiny_model(opts)


# ---- ImageNet ResNet weights into the context path ---------------------------------------------
def d2seg_to_mmseg_resnet(k):
    """d2seg's ResNet key -> mmseg's ResNet / ResNetV1c key (the inverse of v1c_to_d2seg)."""
    m = re.match(r"^stem\.conv(\d)\.(norm\.)?(.*)$", k)
    if m:
        return f"stem.{3 * (int(m[1]) - 1) + bool(m[2])}.{m[3]}"
    k = re.sub(r"^res(\d)", lambda m: f"layer{int(m[1]) - 1}", k)
    k = re.sub(r"\.conv(\d)\.norm\.", r".bn\1.", k)
    return k.replace(".shortcut.norm.", ".downsample.1.").replace(".shortcut.", ".downsample.0.")


def imagenet_resnet18(stem, seed=0):
    """Random weights in the layout of open-mmlab://resnet18_v1c (``stem="deeplab"``: deep stem
    ``stem.{0,1,3,4,6,7}``) or torchvision's resnet18 (``"basic"``: ``conv1``/``bn1``), at the
    tiny model's widths, with an ImageNet classifier."""
    g = torch.Generator().manual_seed(seed)
    source = tiny_model(["MODEL.RESNETS.STEM_TYPE", stem]).backbone.context_path.backbone
    sd = {}
    for k, v in source.state_dict().items():
        name = d2seg_to_mmseg_resnet(k)
        if stem == "basic":
            name = name.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
        sd[name] = (torch.tensor(7) if k.endswith("num_batches_tracked") else
                    torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var") else
                    torch.randn(v.shape, generator=g))
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 128, generator=g), torch.randn(1000)
    return sd


def test_resnet_v1c_loads_the_stages_and_leaves_the_plain_stem_at_pytorch_init(tmp_path):
    """mmseg's in1k-pre configs load open-mmlab://resnet*_v1c into a plain ResNet with
    strict=False: layer1-4 load; the deep-stem keys stem.* match nothing (skipped) and conv1 /
    bn1 keep PyTorch's construction init (the Pretrained init skips the ResNet's Kaiming init)."""
    sd = imagenet_resnet18("deeplab")
    path = tmp_path / "resnet18_v1c.pth"
    torch.save({"state_dict": sd}, path)
    model = tiny_model()
    kept = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(CONTEXT)}
    ckpt, log = load_logged(model, path)
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    assert "open-mmlab ResNetV1c" in log
    state = model.state_dict()
    stages = {k for k in state if k.startswith(CONTEXT + "res")}
    assert set(report.loaded) == stages
    for k in sd:
        target = v1c_to_d2seg(k)
        if target is not None and target.startswith("backbone.res"):
            assert torch.equal(state[target.replace("backbone.", CONTEXT, 1)], sd[k]), k
    assert {k for k in report.skipped if "stem" in k} == {
        f"backbone.stem.conv{i}.{n}" for i in (1, 2, 3)
        for n in ("weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var",
                  "norm.num_batches_tracked")}
    assert {"fc.weight", "fc.bias"} <= set(report.skipped)
    assert {CONTEXT + "stem.conv1.weight", CONTEXT + "stem.conv1.norm.weight"} <= set(
        report.kept_init)
    # the 7x7 stem: PyTorch's default init (kaiming_uniform a=sqrt(5): |w| <= 1/sqrt(fan_in), std
    # 1/sqrt(3 fan_in)), not mmseg's from-scratch Kaiming normal (fan_out, std sqrt(2/fan_out))
    w = state[CONTEXT + "stem.conv1.weight"]
    fan_in = w[0].numel()
    assert w.abs().max() <= fan_in ** -0.5
    assert 0.85 < w.std().item() * (3 * fan_in) ** 0.5 < 1.15
    assert torch.all(state[CONTEXT + "stem.conv1.norm.weight"] == 1)
    # everything but the ResNet keeps its initialisation
    assert all(torch.equal(v, state[k]) for k, v in kept.items())


def test_torchvision_resnet_loads_whole_into_the_context_path(tmp_path):
    sd = imagenet_resnet18("basic", seed=1)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(sd, path)
    model = tiny_model()
    ckpt, log = load_logged(model, path)
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    assert "torchvision ResNet" in log
    state = model.state_dict()
    assert set(report.loaded) == {k for k in state if k.startswith(CONTEXT)}
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(state[CONTEXT + "stem.conv1.weight"], sd["conv1.weight"])
    assert torch.equal(state[CONTEXT + "stem.conv1.norm.running_var"], sd["bn1.running_var"])
    assert torch.equal(state[CONTEXT + "res3.0.shortcut.norm.bias"],
                       sd["layer2.0.downsample.1.bias"])


def test_other_imagenet_weights_say_they_do_not_fit(tmp_path):
    torch.save({"layers.0.0.projection.weight": torch.zeros(1)}, tmp_path / "mit.pth")
    with pytest.raises(ValueError, match="BiSeNetV1's context path is a ResNet.*'mit'"):
        load_logged(tiny_model(), tmp_path / "mit.pth")


def test_trains():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (2, 66, 98), generator=g)
    label[:, :8] = 255
    losses = model([{"image": torch.rand(3, 66, 98, generator=g) * 255, "sem_seg": y}
                    for y in label])
    assert set(losses) == {"loss_sem_seg", "loss_aux", "loss_aux_2"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    bb = model.backbone
    for p in (bb.spatial_path.layer1.weight, bb.context_path.backbone.stem.conv1.weight,
              bb.context_path.arm32.conv_layer.weight):
        assert p.grad.abs().sum() > 0


def test_onnx_dynamic_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    model = random_bn_model(("bisenetv1_r18-d32", TINY_OPTS))
    module = SegmentationExportModule(plain_for_export(model), labels=False).eval()
    path = str(tmp_path / "model.onnx")
    sizes = [(1, 64, 96), (2, 65, 97)]  # odd: nearest upsampling to odd context sizes
    export(module, "onnx", path, torch.rand(sizes[0][0], 3, *sizes[0][1:]) * 255, dynamic=True)
    ok, figures = verify_export(module, "onnx", path, sizes)
    assert ok, figures
