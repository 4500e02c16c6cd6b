"""mmseg's FPN neck (its options against mmseg's FPN module itself), FPNHead, and mmcls's
PoolFormer outside the whole-model parity (tests/parity/test_parity_poolformer.py): outputs at odd
sizes, from-scratch init, ImageNet weights (mmcls and sail-sg layouts) through MODEL.WEIGHTS, bad
config values, ONNX export with dynamic H x W."""
import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from d2seg.checkpoint.backbones import convert_backbone_state_dict, detect_backbone_format
from d2seg.modeling.necks import build_neck
from test_checkpoint_formats import load_logged, one_thread  # noqa: F401  (autouse fixture)

YAML = REPO_CONFIGS / "_base_/models/fpn_poolformer_s12.yaml"
LAYERS, DIMS = [2, 1, 2, 1], [8, 16, 24, 32]
NARROW = ["MODEL.POOLFORMER.ARCH", "", "MODEL.POOLFORMER.LAYERS", LAYERS,
          "MODEL.POOLFORMER.EMBED_DIMS", DIMS, "MODEL.NECK.OUT_CHANNELS", 16,
          "MODEL.SEM_SEG_HEAD.CONVS_DIM", 8, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5,
          "MODEL.SEM_SEG_HEAD.NORM", "BN"]


def tiny_model(opts=()):
    return build_model(get_d2seg_cfg(YAML, NARROW + list(opts))).eval()


def _mmseg():
    pytest.importorskip("mmseg")
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()


# ---- FPN neck against mmseg's FPN -------------------------------------------------------------
IN_SHAPE = {f"c{i}": ShapeSpec(channels=c, stride=4 * 2 ** i)
            for i, c in enumerate([6, 10, 12, 14])}


@pytest.mark.parametrize("mm, ours", [
    (dict(num_outs=4), {}),
    (dict(num_outs=6), {}),  # extra levels by max-pool
    (dict(num_outs=6, add_extra_convs="on_input"), {"ADD_EXTRA_CONVS": "on_input"}),
    (dict(num_outs=5, add_extra_convs="on_lateral", start_level=1),
     {"ADD_EXTRA_CONVS": "on_lateral", "START_LEVEL": 1}),
    (dict(num_outs=6, add_extra_convs=True, relu_before_extra_convs=True),
     {"ADD_EXTRA_CONVS": "on_output", "RELU_BEFORE_EXTRA_CONVS": True}),
    (dict(num_outs=2, start_level=1, end_level=3), {"START_LEVEL": 1, "END_LEVEL": 3}),
    (dict(num_outs=4, norm_cfg=dict(type="BN"), act_cfg=dict(type="ReLU"),
          no_norm_on_lateral=True),
     {"NORM": "BN", "ACTIVATION": "ReLU", "NO_NORM_ON_LATERAL": True}),
    (dict(num_outs=4, upsample_cfg=dict(mode="bilinear", align_corners=False)),
     {"UPSAMPLE_MODE": "bilinear"}),
])
def test_fpn_neck_matches_mmseg_fpn(mm, ours):
    _mmseg()
    from mmseg.models.necks import FPN as MMFPN
    from mmseg_peer import randomize_

    ref = MMFPN([6, 10, 12, 14], 8, **mm).eval()
    randomize_(ref)
    opts = ["MODEL.NECK.NAME", "FPN", "MODEL.NECK.IN_FEATURES", [],
            "MODEL.NECK.OUT_CHANNELS", 8, "MODEL.NECK.NUM_OUTS", mm["num_outs"]]
    for k, v in ours.items():
        opts += [f"MODEL.NECK.FPN.{k}", v]
    neck = build_neck(get_d2seg_cfg(YAML, opts), IN_SHAPE).eval()
    sd = convert_mmseg_state_dict(ref.state_dict(), is_resnet=False)
    neck.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(0)
    sizes = [(49, 67), (25, 34), (13, 17), (7, 9)]  # odd, as a stride-4 backbone on 193x267
    xs = [torch.randn(1, c, *s, generator=g) for c, s in zip([6, 10, 12, 14], sizes)]
    with torch.no_grad():
        expected = ref(xs)
        got = neck({f"c{i}": x for i, x in enumerate(xs)})
    assert list(got) == [f"fpn{i}" for i in range(len(expected))]
    shapes = neck.output_shape()
    for i, e in enumerate(expected):
        assert got[f"fpn{i}"].shape == e.shape
        assert shapes[f"fpn{i}"].channels == 8
        torch.testing.assert_close(got[f"fpn{i}"], e, rtol=1e-5, atol=1e-5 * e.abs().max())
    start = mm.get("start_level", 0)
    assert shapes["fpn0"].stride == 4 * 2 ** start
    assert [s.stride for s in shapes.values()] == [
        4 * 2 ** (start + i) for i in range(len(expected))]


def test_fpn_init_equals_mmseg():
    """mmseg's FPN init_cfg: xavier-uniform convs (over ConvModule's kaiming), zero biases."""
    _mmseg()
    from mmseg.models.necks import FPN as MMFPN

    ref = MMFPN([64, 128, 256, 512], 256, 4)
    ref.init_weights()
    neck = build_neck(get_d2seg_cfg(YAML, ["MODEL.NECK.IN_FEATURES", []]),
                      {f"c{i}": ShapeSpec(channels=64 * 2 ** i, stride=4 * 2 ** i)
                       for i in range(4)})
    theirs = convert_mmseg_state_dict(ref.state_dict(), is_resnet=False)
    ours = neck.state_dict()
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        if v.dim() == 1:
            assert torch.equal(ours[k], v), k
        else:  # xavier uniform: bound sqrt(6 / (fan_in + fan_out)), std = bound / sqrt(3)
            fan = v[0].numel() + v.shape[0] * v[0, 0].numel()
            bound = (6 / fan) ** 0.5
            for t in (v, ours[k]):
                assert t.abs().max() <= bound
                assert abs(t.std().item() / (bound / 3 ** 0.5) - 1) < 0.1, k


@pytest.mark.parametrize("opts, message", [
    (["MODEL.NECK.NUM_OUTS", 3], "NUM_OUTS=3"),
    (["MODEL.NECK.FPN.START_LEVEL", 4], "START_LEVEL=4"),
    (["MODEL.NECK.FPN.END_LEVEL", 3], "END_LEVEL=3"),
    (["MODEL.NECK.FPN.ADD_EXTRA_CONVS", "on_top"], "ADD_EXTRA_CONVS='on_top'"),
    (["MODEL.NECK.FPN.ACTIVATION", "GELU"], "ACTIVATION='GELU'"),
    (["MODEL.NECK.IN_FEATURES", ["pf0", "pf1"]], r"\['pf1'\] not among"),
    (["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["fpn1", "fpn0"]], "first must be the smallest"),
    (["MODEL.POOLFORMER.EMBED_DIMS", [8, 16, 16, 32]], "consecutive stages"),
    (["MODEL.POOLFORMER.LAYERS", [2, 1, 2]], "one value per stage"),
    (["MODEL.POOLFORMER.OUT_INDICES", [0, 7]], "OUT_INDICES=\\[0, 7\\]"),
    (["MODEL.POOLFORMER.ARCH", "s13"], "ARCH='s13'"),
    (["MODEL.POOLFORMER.ARCH", "s12"], "both"),
])
def test_bad_config_values_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(opts)


# ---- PoolFormer ---------------------------------------------------------------------------------
def test_poolformer_outputs_at_odd_sizes():
    model = tiny_model()
    shapes = model.backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "pf0": (8, 4), "pf2": (16, 8), "pf4": (24, 16), "pf6": (32, 32)}
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        feats = model.backbone(x)
        logits = model.encode_decode(x)
    assert {k: tuple(v.shape[2:]) for k, v in feats.items()} == {
        "pf0": (24, 33), "pf2": (12, 17), "pf4": (6, 9), "pf6": (3, 5)}  # 7x7/4 pad 2, 3x3/2 pad 1
    assert logits.shape == (1, 5, 97, 131)
    # a downsampling output (odd index) and fewer outputs: only what is needed runs
    model = tiny_model(["MODEL.POOLFORMER.OUT_INDICES", [1, 2], "MODEL.NECK.NAME", "",
                        "MODEL.SEM_SEG_HEAD.NAME", "FCNHead",
                        "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["pf2"],
                        "MODEL.SEM_SEG_HEAD.INPUT_TRANSFORM", ""])
    with torch.no_grad():
        feats = model.backbone(x)
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {"pf1": (16, 12, 17),
                                                                 "pf2": (16, 12, 17)}


def test_poolformer_frozen_stages_as_mmcls():
    """mmcls's frozen_stages: 0 (mmseg's configs) freezes patch_embed; 2 also network.0/1 and
    norm0; -1 nothing."""
    def frozen(n):
        bb = tiny_model(["MODEL.POOLFORMER.FROZEN_STAGES", n]).backbone.train()
        return sorted({k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("network") else "")
                       for k, p in bb.named_parameters() if not p.requires_grad})
    assert frozen(-1) == []
    assert frozen(0) == ["patch_embed"]
    assert frozen(2) == ["network.0", "network.1", "norm0", "patch_embed"]


def test_poolformer_init_and_shapes_equal_mmcls():
    """mmcls's PoolFormer has no init of its own (PyTorch's defaults; mmseg's configs give only
    the ImageNet checkpoint); layer scales start at 1e-5 (s12/s24) or 1e-6 (s36/m36/m48); the
    drop-path schedule is mmcls's."""
    _mmseg()
    pytest.importorskip("mmcls")
    from mmcls.models.backbones import PoolFormer as MMPoolFormer

    from d2seg.modeling.backbone.poolformer import POOLFORMER_ARCHS

    # every arch (s36/m36/m48 with layer scale 1e-6) as mmcls's table
    assert {a: (v["layers"], v["embed_dims"], v["mlp_ratios"], v["layer_scale_init_value"])
            for a, v in MMPoolFormer.arch_settings.items()} == {
        a: tuple(v) for a, v in POOLFORMER_ARCHS.items()}
    ref = MMPoolFormer(arch="s12", out_indices=(0, 2, 4, 6), drop_path_rate=0.1)
    ref.init_weights()
    model = build_model(get_d2seg_cfg(YAML, ["MODEL.SEM_SEG_HEAD.NORM", "BN",
                                             "MODEL.POOLFORMER.DROP_PATH_RATE", 0.1]))
    ours, theirs = model.backbone.state_dict(), ref.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    for k, v in theirs.items():
        if v.dim() == 1:  # GroupNorm 1/0, layer scales (1e-5); conv biases are random
            if "bias" in k and "norm" not in k:
                continue
            assert torch.equal(ours[k], v), k
        elif v.numel() >= 4096:  # kaiming-uniform(a=sqrt(5)): std = 1 / sqrt(3 fan_in)
            std = 1 / (3 * v[0].numel()) ** 0.5
            for t in (v, ours[k]):
                assert abs(t.std().item() / std - 1) < 0.1, k
    assert ours["network.0.0.layer_scale_1"][0] == 1e-5
    rates = [m.drop_prob for m in model.backbone.modules() if hasattr(m, "drop_prob")]
    ref_rates = [m.drop_prob for m in ref.modules() if hasattr(m, "drop_prob")]
    assert rates == pytest.approx(ref_rates) and len(rates) == 11  # s12: 12 blocks, first 0


def _imagenet_state_dict(model, official=False):
    """ImageNet PoolFormer weights of the narrow model: mmcls's layout (``backbone.`` + names,
    ``backbone.norm6``, ``head.fc``) or sail-sg's (bare names, final ``norm``, ``head``)."""
    g = torch.Generator().manual_seed(0)
    sd = {k[len("backbone."):]: torch.randn(v.shape, generator=g)
          for k, v in model.state_dict().items()
          if k.startswith("backbone.") and not k.startswith(("backbone.norm0", "backbone.norm2",
                                                             "backbone.norm4"))}
    if official:
        sd = {("norm." + k[len("norm6."):] if k.startswith("norm6.") else k): v
              for k, v in sd.items()}
        sd.update({"head.weight": torch.randn(10, 32), "head.bias": torch.randn(10)})
        return sd
    sd = {"backbone." + k: v for k, v in sd.items()}
    sd.update({"head.fc.weight": torch.randn(10, 32), "head.fc.bias": torch.randn(10)})
    return sd


@pytest.mark.parametrize("official", [False, True])
def test_imagenet_weights_load(tmp_path, official):
    model = tiny_model()
    sd = _imagenet_state_dict(model, official)
    expected_fmt = "poolformer_official" if official else "mmcls:poolformer"
    assert detect_backbone_format(sd) == expected_fmt
    path = tmp_path / "poolformer.pth"
    torch.save(sd if official else {"state_dict": sd, "meta": {}}, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt, log = load_logged(model, path)
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    assert ("PoolFormer (sail-sg)" if official else "PoolFormer (mmcls)") in log
    state = model.state_dict()
    source = {k if official else k[len("backbone."):]: v for k, v in sd.items()}
    if official:
        source["norm6.weight"], source["norm6.bias"] = source["norm.weight"], source["norm.bias"]
    loaded = {k for k in state if k.startswith(("backbone.patch_embed.", "backbone.network.",
                                                "backbone.norm6."))}
    assert set(report.loaded) == loaded
    for k in loaded:
        assert torch.equal(state[k], source[k[len("backbone."):]]), k
    # the new output norms and the neck / head keep their init
    for k, v in before.items():
        if k not in loaded:
            assert torch.equal(state[k], v), k
    assert sorted(report.skipped) == (["head.bias", "head.weight"] if official
                                      else ["head.fc.bias", "head.fc.weight"])


def test_onnx_dynamic_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from export_models import randomize_
    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    model = randomize_(tiny_model())
    module = SegmentationExportModule(plain_for_export(model)).eval()
    path = str(tmp_path / "model.onnx")
    export(module, "onnx", path, torch.rand(1, 3, 64, 96) * 255, dynamic=True)
    ok, figures = verify_export(module, "onnx", path, [(1, 64, 96), (2, 97, 131)])
    assert ok, figures
