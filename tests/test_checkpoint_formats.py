"""Checkpoint formats through MODEL.WEIGHTS / SegCheckpointer: ImageNet backbones (torchvision,
open-mmlab ResNetV1c, Detectron2/MSRA caffe .pkl, HRNetV2), mmseg 0.x/1.x files, the converter
tool, and bad input (truncated, not a checkpoint, another method, another class count).

Each source checkpoint is built in its own layout (torchvision's resnet50(), mmseg's HRNet, or the
documented key names), and every tensor is checked to land where it should; where the source
model runs here, the d2seg backbone's features are compared with it too."""
import importlib.util
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg, tiny_cfg
from d2seg.checkpoint import (
    CheckpointMismatchError, SegCheckpointer, load_mmseg_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
BN_OPTS = ["MODEL.RESNETS.NORM", "BN", "MODEL.HRNET.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
           "MODEL.AUX_HEAD.NORM", "BN"]
# plain (non-dilated) ResNet, so features can be compared with the source models
NO_DILATION = ["MODEL.RESNETS.STAGE_STRIDES", [1, 2, 2, 2],
               "MODEL.RESNETS.STAGE_DILATIONS", [1, 1, 1, 1]]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small inputs gain nothing from intra-op threads; on a busy runner they cost a lot."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def resnet_model(depth=50, stem="deeplab", stride_in_1x1=False, norm="BN", extra=()):
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/fcn_r50-d8.yaml", BN_OPTS + [
        "MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.STEM_TYPE", stem,
        "MODEL.RESNETS.STRIDE_IN_1X1", stride_in_1x1, "MODEL.RESNETS.NORM", norm, *extra])
    return build_model(cfg).eval()


def load_logged(model, path, **kwargs):
    """SegCheckpointer(model).load(path) -> (checkpointer, INFO/WARNING log text)."""
    ckpt = SegCheckpointer(model, **kwargs)
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda r: records.append(r.getMessage())
    old_level = ckpt.logger.level
    ckpt.logger.addHandler(handler)
    ckpt.logger.setLevel(logging.INFO)
    try:
        ckpt.load(str(path))
    finally:
        ckpt.logger.removeHandler(handler)
        ckpt.logger.setLevel(old_level)
    return ckpt, "\n".join(records)


def random_buffers_(state):
    """Distinct values for BN statistics too, so a swapped tensor cannot go unnoticed."""
    g = torch.Generator().manual_seed(0)
    for k, v in state.items():
        if v.is_floating_point():
            v.copy_(torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var")
                     else torch.randn(v.shape, generator=g) * 0.1 + (1 if "weight" in k else 0))
    return state


def head_params(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}


def assert_heads_untouched(model, before):
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def assert_lands(model, source, mapping):
    """Every source tensor (but the classifier) equals the model tensor ``mapping`` names."""
    state = model.state_dict()
    for k, v in source.items():
        target = mapping(k)
        if target is None:
            continue
        assert target in state, (k, target)
        assert torch.equal(state[target], torch.as_tensor(v)), (k, target)


# ---- torchvision ResNet (7x7 stem, stride in the 3x3) ---------------------------------------------
def torchvision_to_d2seg(k):
    if k.startswith("fc."):
        return None
    k = re.sub(r"^conv1\.", "stem.conv1.", k)
    k = re.sub(r"^bn1\.", "stem.conv1.norm.", k)
    k = re.sub(r"^layer(\d)", lambda m: f"res{int(m[1]) + 1}", k)
    k = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", k)
    k = k.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return "backbone." + k


def test_torchvision_resnet50_lands_in_the_backbone(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet50(weights=None).eval()
    random_buffers_(tv.state_dict())
    torch.save(tv.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    model = resnet_model(stem="basic", extra=NO_DILATION)
    heads = head_params(model)
    ckpt, log = load_logged(model, tmp_path / "resnet50-0676ba61.pth")
    report = ckpt.last_report
    assert report.backbone_only and not report.errors
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == len(tv.state_dict()) - 2
    assert_lands(model, tv.state_dict(), torchvision_to_d2seg)
    assert_heads_untouched(model, heads)
    assert f"Loaded {len(report.loaded)} tensors from torchvision ResNet" in log
    assert "fc.{bias, weight}" in log
    assert "backbone.res2.0.conv1.norm.{bias, num_batches_tracked" in log
    # and the backbone computes what torchvision computes
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        got = model.backbone(x)["res5"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# ---- open-mmlab ResNetV1c (resnet50_v1c / resnet101_v1c) ------------------------------------------
def v1c_state_dict(depth):
    """Key layout of open-mmlab://resnet{50,101}_v1c: deep stem stem.{0,1,3,4,6,7}, layer1-4,
    fc (mmcv's ResNetV1c + an ImageNet classifier)."""
    g = torch.Generator().manual_seed(depth)
    sd = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g)

    def bn(name, c):
        for s in ("weight", "bias", "running_mean"):
            sd[f"{name}.{s}"] = torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(7)

    for i, (cin, cout) in enumerate([(3, 32), (32, 32), (32, 64)]):
        conv(f"stem.{3 * i}", cout, cin, 3)
        bn(f"stem.{3 * i + 1}", cout)
    cin = 64
    for s, n in enumerate({50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]):
        width = 64 * 2 ** s
        for b in range(n):
            p = f"layer{s + 1}.{b}"
            conv(f"{p}.conv1", width, cin, 1), bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3), bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", 4 * width, width, 1), bn(f"{p}.bn3", 4 * width)
            if b == 0:
                conv(f"{p}.downsample.0", 4 * width, cin, 1), bn(f"{p}.downsample.1", 4 * width)
            cin = 4 * width
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 2048, generator=g), torch.randn(1000)
    return sd


def v1c_to_d2seg(k):
    if k.startswith("fc."):
        return None
    m = re.match(r"stem\.(\d)\.(.*)", k)
    if m:
        i = int(m[1])
        return f"backbone.stem.conv{i // 3 + 1}." + ("norm." if i % 3 else "") + m[2]
    return torchvision_to_d2seg(k)


@pytest.mark.parametrize("depth", [50, 101])
def test_openmmlab_resnet_v1c_lands_in_the_backbone(tmp_path, depth):
    sd = v1c_state_dict(depth)
    try:  # the documented layout is mmseg's ResNetV1c + fc
        from mmseg_peer import stub_mmcv_ext

        stub_mmcv_ext()
        from mmseg.models.backbones import ResNetV1c

        assert set(ResNetV1c(depth=depth).state_dict()) | {"fc.weight", "fc.bias"} == set(sd)
    except ImportError:
        pass
    path = tmp_path / f"resnet{depth}_v1c.pth"
    torch.save({"state_dict": sd}, path)  # mmcv's container; a bare state_dict works too
    model = resnet_model(depth)
    heads = head_params(model)
    ckpt, log = load_logged(model, path)
    assert ckpt.last_report.backbone_only and not ckpt.last_report.errors
    assert len(ckpt.last_report.loaded) == len(sd) - 2
    assert_lands(model, sd, v1c_to_d2seg)
    assert_heads_untouched(model, heads)
    assert "open-mmlab ResNetV1c" in log and "fc.{bias, weight}" in log


# ---- Detectron2 / MSRA caffe R-50.pkl, R-101.pkl ------------------------------------------------
def msra_blobs(depth):
    """Detectron's ImageNet R-{50,101}.pkl: caffe2 blob names, numpy arrays, BN folded into an
    affine (``_bn_s`` scale, ``_bn_b`` bias; no running statistics), ``fc1000`` classifier."""
    rng = np.random.default_rng(depth)
    blobs = {}

    def conv(name, cout, cin, k):
        blobs[f"{name}_w"] = rng.standard_normal((cout, cin, k, k)).astype(np.float32) / (cin * k * k) ** 0.5

    def affine(name, c):
        blobs[f"{name}_bn_s"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        blobs[f"{name}_bn_b"] = (rng.standard_normal(c) * 0.1).astype(np.float32)

    conv("conv1", 64, 3, 7)
    affine("res_conv1", 64)
    cin = 64
    for s, n in enumerate({50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]):
        width = 64 * 2 ** s
        for b in range(n):
            p = f"res{s + 2}_{b}_"
            if b == 0:
                conv(p + "branch1", 4 * width, cin, 1), affine(p + "branch1", 4 * width)
            conv(p + "branch2a", width, cin, 1), affine(p + "branch2a", width)
            conv(p + "branch2b", width, width, 3), affine(p + "branch2b", width)
            conv(p + "branch2c", 4 * width, width, 1), affine(p + "branch2c", 4 * width)
            cin = 4 * width
    blobs["fc1000_w"] = rng.standard_normal((1000, 2048)).astype(np.float32)
    blobs["fc1000_b"] = np.zeros(1000, np.float32)
    return blobs


def msra_to_d2seg(k):
    if k.startswith("fc1000"):
        return None
    suffix = {"w": "weight", "bn_s": "norm.weight", "bn_b": "norm.bias"}
    if k.startswith(("conv1_", "res_conv1_")):
        return "backbone.stem.conv1." + suffix[k.split("_", 2 if k.startswith("res") else 1)[-1]]
    m = re.match(r"res(\d)_(\d+)_branch(1|2a|2b|2c)_(w|bn_s|bn_b)$", k)
    module = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}[m[3]]
    return f"backbone.res{m[1]}.{m[2]}.{module}.{suffix[m[4]]}"


@pytest.mark.parametrize("depth,layout", [(50, "blobs dict"), (101, "{'blobs': ...}")])
def test_msra_caffe_pkl_loads_natively(tmp_path, depth, layout):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling.backbone import build_resnet_backbone

    blobs = msra_blobs(depth)
    path = tmp_path / f"R-{depth}.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs if layout == "blobs dict" else {"blobs": blobs}, f)
    caffe = ["MODEL.PIXEL_MEAN", [103.530, 116.280, 123.675], "MODEL.PIXEL_STD", [1.0, 1.0, 1.0]]
    model = resnet_model(depth, stem="basic", stride_in_1x1=True, norm="FrozenBN",
                         extra=NO_DILATION + caffe)
    heads = head_params(model)
    ckpt, log = load_logged(model, path)
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    assert sorted(report.skipped) == ["fc1000.bias", "fc1000.weight"]
    assert len(report.loaded) == len(blobs) - 2
    # caffe weights have no BN statistics: FrozenBN keeps mean 0 / var 1
    assert report.kept_init and all(k.endswith(("running_mean", "running_var"))
                                    for k in report.kept_init if k.startswith("backbone."))
    assert_lands(model, blobs, msra_to_d2seg)
    assert_heads_untouched(model, heads)
    if depth == 50:  # same features as Detectron2's own ResNet loading the same file
        cfg = get_cfg()
        cfg.merge_from_list(["MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.NORM", "FrozenBN",
                             "MODEL.RESNETS.OUT_FEATURES", ["res5"], "MODEL.BACKBONE.FREEZE_AT", 0])
        d2 = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
        DetectionCheckpointer(d2).load(str(path))
        x = torch.randn(1, 3, 64, 64) * 50
        with torch.no_grad():
            torch.testing.assert_close(model.backbone(x)["res5"], d2(x)["res5"])


def test_detectron2_zoo_pkl_from_torchvision(tmp_path):
    """detectron2://ImageNetPretrained/torchvision/R-50.pkl layout (tools/convert-torchvision-
    to-d2.py: Detectron2 names, numpy, matching_heuristics)."""
    torchvision = pytest.importorskip("torchvision")
    tv = random_buffers_(torchvision.models.resnet50(weights=None).state_dict())
    d2_names = {}
    for k, v in tv.items():
        old = k
        if "layer" not in k:
            k = k.replace("conv1", "stem.conv1")
        for t in [1, 2, 3, 4]:
            k = k.replace(f"layer{t}", f"res{t + 1}")
        for t in [1, 2, 3]:
            k = k.replace(f"bn{t}", f"conv{t}.norm")
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        d2_names[k] = (old, v.numpy())
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v for k, (_, v) in d2_names.items()},
                     "__author__": "torchvision", "matching_heuristics": True}, f)
    model = resnet_model(stem="basic", extra=NO_DILATION)
    ckpt, _ = load_logged(model, path)
    assert ckpt.last_report.backbone_only and not ckpt.last_report.errors
    assert sorted(ckpt.last_report.skipped) == ["fc.bias", "fc.weight"]
    assert_lands(model, {old: torch.from_numpy(v) for _, (old, v) in d2_names.items()},
                 torchvision_to_d2seg)


# ---- HRNetV2 ImageNet (HRNet-Image-Classification, as mmseg loads it) -------------------------
HRNET = {"W18-Small": ("fcn_hr18s", "hrnet/fcn_hr18s_512x1024_40k_cityscapes"),
         "W18": ("fcn_hr18", "hrnet/fcn_hr18_512x1024_40k_cityscapes"),
         "W48": ("fcn_hr48", "hrnet/fcn_hr48_512x1024_40k_cityscapes")}
# the classification head of the official checkpoints, which mmseg (and d2seg) skip
HRNET_CLS = {"incre_modules.0.0.conv1.weight": (32, 18, 1, 1), "downsamp_modules.0.0.weight":
             (256, 128, 3, 3), "final_layer.0.weight": (2048, 1024, 1, 1),
             "classifier.weight": (1000, 2048), "classifier.bias": (1000,)}


@pytest.mark.parametrize("variant", list(HRNET))
def test_hrnetv2_imagenet_lands_in_the_backbone(tmp_path, variant):
    mmseg_peer = pytest.importorskip("mmseg_peer")
    pytest.importorskip("mmseg")
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models import build_backbone

    yaml, mm_name = HRNET[variant]
    bb_cfg = mmseg_peer.mmseg_config(mm_name).model.backbone
    bb_cfg.norm_cfg = dict(type="BN", requires_grad=True)
    ref = build_backbone(bb_cfg)
    ref.eval()  # mmseg's HRNet.train() returns None
    mmseg_peer.randomize_(ref)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    # names of the official layout (HRNet-Image-Classification's HighResolutionNet)
    for k in ("conv1.weight", "bn2.running_var", "layer1.0.downsample.1.weight",
              "transition1.1.0.0.weight", "stage2.0.branches.1.1.bn2.bias",
              "stage2.0.fuse_layers.0.1.0.weight", "stage4.0.fuse_layers.3.0.2.1.weight"):
        assert k in sd, k
    sd.update({k: torch.randn(s) for k, s in HRNET_CLS.items()})
    torch.save(sd, tmp_path / f"hrnetv2_{variant}.pth")  # a bare state_dict, as published

    model = build_model(get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml", BN_OPTS)).eval()
    heads = head_params(model)
    ckpt, log = load_logged(model, tmp_path / f"hrnetv2_{variant}.pth")
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    assert sorted(report.skipped) == sorted(HRNET_CLS)
    assert len(report.loaded) == len(sd) - len(HRNET_CLS)
    assert_lands(model, sd, lambda k: None if k in HRNET_CLS else "backbone." + k)
    assert_heads_untouched(model, heads)
    assert "HRNetV2 ImageNet" in log
    if variant == "W18-Small":
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            expected, got = ref(x), model.backbone(x)
        for i, e in enumerate(expected):
            torch.testing.assert_close(got[f"hr{i + 1}"], e, rtol=1e-4, atol=1e-4 * e.abs().max())


def test_backbone_of_another_layout_raises(tmp_path):
    """torchvision (7x7 stem) weights into a V1c (deep stem) config; R-101 into R-50."""
    torchvision = pytest.importorskip("torchvision")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "tv.pth")
    model = resnet_model(50, stem="deeplab")
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch for backbone\.stem\.conv1"):
        SegCheckpointer(model).load(str(tmp_path / "tv.pth"))
    torch.save(v1c_state_dict(101), tmp_path / "r101.pth")
    with pytest.raises(CheckpointMismatchError, match=r"the model does not have \(306\):\n  backbone\.res4\.6\.conv1"):
        SegCheckpointer(model).load(str(tmp_path / "r101.pth"))


# ---- mmseg 0.x / 1.x files, the converter tool ---------------------------------------------------
def to_mmseg_keys(sd):
    """d2seg tiny FCN (ResNet-18 V1c + FCN heads) -> mmseg 0.x names (the inverse of the rules)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("backbone."):
            k = re.sub(r"stem\.conv(\d)\.norm\.", lambda m: f"stem.{3 * int(m[1]) - 2}.", k)
            k = re.sub(r"stem\.conv(\d)\.", lambda m: f"stem.{3 * int(m[1]) - 3}.", k)
            k = re.sub(r"\.res(\d)\.", lambda m: f".layer{int(m[1]) - 1}.", k)
            k = re.sub(r"\.conv(\d)\.norm\.", r".bn\1.", k)
            k = k.replace(".shortcut.norm.", ".downsample.1.").replace(".shortcut.", ".downsample.0.")
        else:
            k = k.replace("auxiliary_heads.0.", "auxiliary_head.")
            if ".conv_seg." not in k:
                k = re.sub(r"\.norm\.", ".bn.", k)
                k = re.sub(r"\.(weight|bias)$", r".conv.\1", k) if ".bn." not in k else k
        out[k] = v
    return out


@pytest.fixture
def tiny_mmseg_file(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    random_buffers_(model.state_dict())
    mm = to_mmseg_keys(model.state_dict())
    assert "decode_head.convs.0.conv.weight" in mm and "backbone.stem.4.running_var" in mm
    assert "auxiliary_head.conv_seg.weight" in mm and "backbone.layer1.0.bn1.weight" in mm
    path = tmp_path / "mmseg_tiny.pth"
    torch.save({"meta": {"mmseg_version": "0.30.0", "CLASSES": list("abcde")}, "state_dict": mm},
               path)
    return model, path


def test_mmseg_1x_layout_module_prefix_and_data_preprocessor(tiny_mmseg_file, tmp_path):
    model, path = tiny_mmseg_file
    mm = torch.load(path)["state_dict"]
    v1x = {"meta": {"mmengine_version": "0.10.3", "dataset_meta": {"classes": list("abcde")}},
           "state_dict": {"module." + k: v for k, v in mm.items()} | {
               "module.data_preprocessor.mean": torch.zeros(3, 1, 1),
               "module.data_preprocessor.std": torch.ones(3, 1, 1)},
           "message_hub": {}, "optimizer": {"state": {}}, "param_schedulers": []}
    ckpt = load_mmseg_checkpoint(v1x)
    assert ckpt["model"].keys() == model.state_dict().keys()
    assert ckpt["meta"]["classes"] == list("abcde") and "1.x" in ckpt["meta"]["mmseg_version"]
    torch.save(v1x, tmp_path / "mmseg_1x.pth")
    target = build_model(tiny_cfg()).eval()
    SegCheckpointer(target).load(str(tmp_path / "mmseg_1x.pth"))
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(),
                                                 model.state_dict().values()))


def run_tool(*argv):
    spec = importlib.util.spec_from_file_location("convert_tool", ROOT / "tools/convert_mmseg_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main([str(a) for a in argv])


TINY_OPTS = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.STEM_OUT_CHANNELS",
             16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16, "MODEL.RESNETS.WIDTH_PER_GROUP", 16,
             "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32,
             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5, "MODEL.AUX_HEAD.NORM", "BN",
             "MODEL.AUX_HEAD.CONVS_DIM", 16]


def test_convert_tool_writes_a_checkpoint_model_weights_loads(tiny_mmseg_file, tmp_path, capsys):
    model, src = tiny_mmseg_file
    dst = tmp_path / "out" / "d2seg_tiny.pth"
    config = REPO_CONFIGS / "_base_/models/fcn_r50-d8.yaml"
    assert run_tool(src, dst, "--config", config, *TINY_OPTS) == 0
    out = capsys.readouterr().out
    assert "missing keys (0)" in out and "unexpected keys (0)" in out and "5 classes" in out
    data = torch.load(dst)
    assert set(data) >= {"model", "meta"}
    target = build_model(tiny_cfg()).eval()
    ckpt = SegCheckpointer(target)
    ckpt.load(str(dst))
    assert not ckpt.last_report.errors and not ckpt.last_report.aux_missing
    assert len(ckpt.last_report.loaded) == len(target.state_dict())
    assert all(torch.equal(target.state_dict()[k], v) for k, v in model.state_dict().items())


def test_convert_tool_fails_on_another_class_count(tiny_mmseg_file, tmp_path, capsys):
    _, src = tiny_mmseg_file
    dst = tmp_path / "d2seg_tiny.pth"
    config = REPO_CONFIGS / "_base_/models/fcn_r50-d8.yaml"
    assert run_tool(src, dst, "--config", config, *TINY_OPTS, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7) == 1
    err = capsys.readouterr().err
    assert "shape mismatch for decode_head.conv_seg.weight: (5, 32, 1, 1) in the checkpoint, " \
           "(7, 32, 1, 1) in the model" in err
    assert not dst.exists()


def test_convert_tool_fails_on_another_method(tiny_mmseg_file, tmp_path, capsys):
    _, src = tiny_mmseg_file
    config = REPO_CONFIGS / "_base_/models/fcn_r50-d8.yaml"
    assert run_tool(src, tmp_path / "x.pth", "--config", config, *TINY_OPTS,
                    "MODEL.SEM_SEG_HEAD.NAME", "PSPHead") == 1
    err = capsys.readouterr().err
    assert "decode_head.convs.0.norm.{bias, num_batches_tracked" in err  # FCN's, not in PSPHead
    assert "decode_head.psp_modules." in err  # PSPHead's, not in the checkpoint


def test_convert_tool_rejects_a_file_that_is_not_an_mmseg_checkpoint(tmp_path, capsys):
    torch.save({"model": {"backbone.res2.0.conv1.weight": torch.zeros(1)}}, tmp_path / "d2.pth")
    assert run_tool(tmp_path / "d2.pth", tmp_path / "x.pth") == 1
    assert "is not an MMSegmentation segmentor checkpoint" in capsys.readouterr().err


# ---- strictness and bad input ------------------------------------------------------------------
def test_other_method_or_class_count_raise_and_leave_the_model_untouched(tmp_path):
    psp = build_model(tiny_cfg(head="PSPHead")).eval()
    SegCheckpointer(psp, save_dir=str(tmp_path)).save("psp")
    fcn = build_model(tiny_cfg()).eval()
    before = {k: v.clone() for k, v in fcn.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"psp\.pth does not fit the model") as e:
        SegCheckpointer(fcn).load(str(tmp_path / "psp.pth"))
    assert "decode_head.psp_modules" in str(e.value) and "decode_head.convs.0" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in fcn.state_dict().items())

    seven = build_model(tiny_cfg(num_classes=7)).eval()
    SegCheckpointer(fcn, save_dir=str(tmp_path)).save("fcn5")
    with pytest.raises(CheckpointMismatchError, match=r"decode_head\.conv_seg\.weight: \(5, "):
        SegCheckpointer(seven).load(str(tmp_path / "fcn5.pth"))
    # Detectron2's lenient behaviour on request: what fits is loaded, the classifier is not
    ckpt = SegCheckpointer(seven, strict=False)
    ckpt.load(str(tmp_path / "fcn5.pth"))
    assert [m[0] for m in ckpt.last_report.mismatched] == [
        "decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
        "auxiliary_heads.0.conv_seg.weight", "auxiliary_heads.0.conv_seg.bias"]
    assert torch.equal(seven.backbone.stem.conv1.weight, fcn.backbone.stem.conv1.weight)


def test_checkpoint_without_auxiliary_head_loads_with_a_warning(tmp_path):
    no_aux = build_model(tiny_cfg(aux=False)).eval()
    SegCheckpointer(no_aux, save_dir=str(tmp_path)).save("no_aux")
    with_aux = build_model(tiny_cfg()).eval()
    ckpt, log = load_logged(with_aux, tmp_path / "no_aux.pth")
    assert not ckpt.last_report.errors and ckpt.last_report.aux_missing
    assert "auxiliary-head tensors missing" in log
    assert torch.equal(with_aux.decode_head.conv_seg.weight, no_aux.decode_head.conv_seg.weight)


def test_resume_checkpoint_round_trip_is_exact(tmp_path):
    model = build_model(tiny_cfg()).eval()
    random_buffers_(model.state_dict())
    SegCheckpointer(model, save_dir=str(tmp_path)).save("model_final", iteration=9)
    other = build_model(tiny_cfg()).eval()
    extra = SegCheckpointer(other).load(str(tmp_path / "model_final.pth"))
    assert extra.get("iteration") == 9
    assert all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["truncated", "text", "empty", "list", "dict", "pkl"])
def test_unreadable_or_non_checkpoint_files_fail_naming_the_file(tmp_path, kind):
    model = build_model(tiny_cfg()).eval()
    path = tmp_path / ("bad.pkl" if kind == "pkl" else "bad.pth")
    if kind == "truncated":
        SegCheckpointer(model, save_dir=str(tmp_path)).save("good")
        data = (tmp_path / "good.pth").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind in ("text", "pkl"):
        path.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "list":
        torch.save([1, 2, 3], path)
    else:
        torch.save({"epoch": 3, "notes": "no weights"}, path)
    with pytest.raises(RuntimeError, match=re.escape(str(path))):
        SegCheckpointer(model).load(str(path))


def test_missing_file_fails_naming_it(tmp_path):
    model = build_model(tiny_cfg()).eval()
    with pytest.raises((AssertionError, FileNotFoundError), match="nope.pth"):
        SegCheckpointer(model).load(str(tmp_path / "nope.pth"))
