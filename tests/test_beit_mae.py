"""BEiT and MAE backbones + Feature2Pyramid (d2seg/modeling/backbone/beit.py,
necks/featurepyramid.py): outputs and strides, the fixed input size's error, the from-scratch
init against mmseg's (same seed, same tensors), the ImageNet layouts (unilm BEiT, MAE, and their
beit2mmseg conversions) loaded by SegCheckpointer with mmseg's resizing of the bias tables and
of MAE's pos_embed, the bias-table interpolation itself, bad config values, and ONNX export at
the fixed size."""
import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import SegCheckpointer
from d2seg.modeling.backbone.beit import geometric_offsets, geometric_sequence_interpolation

TINY = ["MODEL.BEIT.EMBED_DIMS", 32, "MODEL.BEIT.NUM_LAYERS", 4, "MODEL.BEIT.NUM_HEADS", 2,
        "MODEL.BEIT.OUT_INDICES", [0, 1, 2, 3], "MODEL.NECK.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.AUX_HEAD.CONVS_DIM", 8,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5]


def _cfg(family, img_size=(64, 64), opts=()):
    return get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/upernet_{family}.yaml", TINY + [
        "MODEL.BEIT.IMG_SIZE", list(img_size),
        "MODEL.NECK.IN_FEATURES", [f"{family}{i}" for i in range(4)], *opts])


@pytest.mark.parametrize("family", ["beit", "mae"])
def test_outputs_pyramid_and_logits(family):
    model = build_model(_cfg(family, (64, 80))).eval()
    shapes = model.backbone.output_shape()
    assert list(shapes) == [f"{family}{i}" for i in range(4)]
    assert {(s.channels, s.stride) for s in shapes.values()} == {(32, 16)}
    assert {k: (s.channels, s.stride) for k, s in model.neck.output_shape().items()} == {
        "pyramid1": (32, 4), "pyramid2": (32, 8), "pyramid3": (32, 16), "pyramid4": (32, 32)}
    x = torch.randn(1, 3, 75, 93)  # a 4 x 5 patch grid: the window of IMG_SIZE 64 x 80
    with torch.no_grad():
        feats = model.extract_feat(x)
        logits = model.encode_decode(x)
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 20), (8, 10), (4, 5), (2, 2)]
    assert logits.shape == (1, 5, 75, 93)
    # BEiT has q/v biases (k's is 0), MAE a full qkv bias and an absolute pos_embed
    attn = model.backbone.layers[0].attn
    assert (attn.qkv.bias is None) == (family == "beit")
    assert hasattr(model.backbone, "pos_embed") == (family == "mae")


@pytest.mark.parametrize("family, size", [("beit", (64, 96)), ("mae", (48, 64)),
                                          ("beit", (80, 64))])
def test_input_of_another_size_names_the_size_and_key(family, size):
    model = build_model(_cfg(family, (64, 64))).eval()
    with pytest.raises(ValueError, match=r"MODEL\.BEIT\.IMG_SIZE=\[64, 64\].*64\.\.79 x 64\.\.79"):
        with torch.no_grad():
            model.encode_decode(torch.randn(1, 3, *size))


@pytest.mark.parametrize("family", ["beit", "mae"])
def test_from_scratch_init_equals_mmseg(family):
    """mmseg's BEiT/MAE.init_weights without a checkpoint, from the same seed: every tensor
    equal (both passes of its init, MAE's fix_init_weight in between, bias tables and MAE's
    pos_embed left at 0, gamma at init_values, the ffn biases' N(0, 1e-6))."""
    pytest.importorskip("mmseg")
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.models.backbones import BEiT, MAE

    from d2seg.modeling.backbone.beit import BEiT as OurBEiT, MAE as OurMAE

    args = dict(img_size=(48, 64), embed_dims=32, num_layers=3, num_heads=2,
                out_indices=(0, 2), init_values=0.5, drop_path_rate=0.1)
    torch.manual_seed(0)
    ref = (BEiT if family == "beit" else MAE)(norm_cfg=dict(type="LN", eps=1e-6), **args)
    ref.init_weights()
    torch.manual_seed(0)
    ours = (OurBEiT if family == "beit" else OurMAE)(**args).state_dict()
    theirs = ref.state_dict()
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k
    assert not theirs["layers.0.attn.relative_position_bias_table"].any()
    assert theirs["layers.1.ffn.layers.0.0.bias"].abs().max() < 1e-5
    assert theirs["layers.1.ffn.layers.0.0.bias"].any()


def _official_beit_sd(model):
    """A unilm BEiT state_dict (beit2mmseg's input) holding ``model``'s weights, with the
    ImageNet model's extra parts (fc_norm, head, relative_position_index)."""
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("layers.", "blocks.").replace(".ln", ".norm")
        k = k.replace("ffn.layers.0.0", "mlp.fc1").replace("ffn.layers.1", "mlp.fc2")
        sd[k.replace("patch_embed.projection", "patch_embed.proj")] = v.clone()
    sd.update({"fc_norm.weight": torch.ones(32), "fc_norm.bias": torch.zeros(32),
               "head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)})
    return sd


@pytest.mark.parametrize("layout", ["official", "mmseg"])
def test_beit_imagenet_weights_load_as_mmseg_loads_them(tmp_path, layout):
    """A BEiT of window 3 (IMG_SIZE 48) saved as unilm does (or as beit2mmseg writes it) into a
    model of window 4: mmseg's BEiT.init_weights(Pretrained) on its beit2mmseg conversion gives
    the reference tensors (interp2d, removed from SciPy, stood in for by the same
    FITPACK spline with interp2d's argument order); d2seg's SegCheckpointer must give them too."""
    pytest.importorskip("mmseg")
    from mmseg_peer import mmseg_tool, randomize_, stub_mmcv_ext
    from scipy.interpolate import RectBivariateSpline

    stub_mmcv_ext()
    import mmseg.models.backbones.beit as mm_beit
    from mmseg.models.backbones import BEiT

    src = BEiT(img_size=48, embed_dims=32, num_layers=4, num_heads=2, out_indices=(0, 1, 2, 3))
    randomize_(src)
    official = _official_beit_sd(src)
    converted = mmseg_tool("model_converters/beit2mmseg.py").convert_beit(official)
    path = tmp_path / "beit.pth"
    torch.save({"model": official} if layout == "official" else converted, path)

    class _Interp2d:  # interp2d(x, y, z, kind='cubic')(xn, yn): rows of z are y
        @staticmethod
        def interp2d(x, y, z, kind):
            f = RectBivariateSpline(y, x, np.asarray(z, np.float64), kx=3, ky=3, s=0)
            return lambda xn, yn: f(yn, xn)

    mmseg_file = tmp_path / "beit_mmseg.pth"  # mmseg reads beit2mmseg's output
    torch.save(converted, mmseg_file)
    ref = BEiT(img_size=64, embed_dims=32, num_layers=4, num_heads=2, out_indices=(0, 1, 2, 3),
               init_cfg=dict(type="Pretrained", checkpoint=str(mmseg_file)))
    orig = mm_beit.interpolate
    mm_beit.interpolate = _Interp2d
    try:
        ref.init_weights()
    finally:
        mm_beit.interpolate = orig

    model = build_model(_cfg("beit"))
    ckpt = SegCheckpointer(model)
    ckpt.load(str(path))
    report = ckpt.last_report
    assert not report.errors and report.backbone_only
    ours = {k[len("backbone."):]: v for k, v in model.state_dict().items()
            if k.startswith("backbone.")}
    assert set(ours) == set(ref.state_dict())
    for k, v in ref.state_dict().items():  # every tensor (the loaded ones and the index)
        torch.testing.assert_close(ours[k], v, rtol=1e-6, atol=1e-6, msg=k)
    table = ours["layers.2.attn.relative_position_bias_table"]
    assert table.shape == (7 * 7 + 3, 2)
    src_table = src.state_dict()["layers.2.attn.relative_position_bias_table"]
    assert torch.equal(table[-3:], src_table[-3:])  # the 3 cls entries are kept
    assert set(report.skipped) >= {"fc_norm.weight", "head.weight"}


@pytest.mark.parametrize("layout", ["official", "mmseg"])
def test_mae_imagenet_weights_resize_pos_embed(tmp_path, layout):
    """An MAE encoder file (timm ViT keys, pos_embed of 3 x 3 patches, no gamma, no bias
    tables): pos_embed bicubic-resized to the model's 4 x 4 grid as mmseg's
    resize_abs_pos_embed (cls slot kept); gamma stays 1.0 and the tables 0 (kept_init)."""
    pytest.importorskip("mmseg")
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.models.backbones import MAE

    ref = MAE(img_size=64, embed_dims=32, num_layers=4, num_heads=2, out_indices=(0, 1, 2, 3),
              init_values=1.0)
    g = torch.Generator().manual_seed(0)
    sd = {"cls_token": torch.randn(1, 1, 32, generator=g),
          "pos_embed": torch.randn(1, 10, 32, generator=g),
          "patch_embed.proj.weight": torch.randn(32, 3, 16, 16, generator=g),
          "patch_embed.proj.bias": torch.randn(32, generator=g),
          "norm.weight": torch.ones(32), "norm.bias": torch.zeros(32)}
    for i in range(4):
        for name, shape in (("norm1", (32,)), ("attn.qkv", (96, 32)), ("attn.proj", (32, 32)),
                            ("norm2", (32,)), ("mlp.fc1", (128, 32)), ("mlp.fc2", (32, 128))):
            sd[f"blocks.{i}.{name}.weight"] = torch.randn(*shape, generator=g)
            sd[f"blocks.{i}.{name}.bias"] = torch.randn(shape[0], generator=g)
    if layout == "mmseg":
        from mmseg_peer import mmseg_tool

        sd = mmseg_tool("model_converters/beit2mmseg.py").convert_beit(sd)
    path = tmp_path / "mae.pth"
    torch.save({"model": sd}, path)
    expected = ref.resize_abs_pos_embed({"pos_embed": sd["pos_embed"].clone()})["pos_embed"]

    model = build_model(_cfg("mae"))
    ckpt = SegCheckpointer(model)
    ckpt.load(str(path))
    report = ckpt.last_report
    assert not report.errors and report.backbone_only
    torch.testing.assert_close(model.backbone.pos_embed.detach(), expected)
    assert torch.equal(model.backbone.layers[3].gamma_2.detach(), torch.ones(32))
    assert not model.backbone.layers[0].attn.relative_position_bias_table.any()
    assert "backbone.layers.0.attn.relative_position_bias_table" in report.kept_init
    assert "norm.weight" in report.skipped


def test_geometric_offsets_are_mmseg_s():
    """0 and +-1 kept (the centre keeps its spacing), symmetric, then ratios of one q."""
    x, dx = geometric_offsets(27, 79)  # BEiT-B: 224 -> 640
    assert len(x) == 27 and list(dx) == list(range(-39, 40))
    assert x[13] == 0 and x[14] == 1 and np.allclose(x, -x[::-1])
    steps = np.diff(x[13:])
    q = steps[1] / steps[0]
    assert 1.01 < q < 1.5 and np.allclose(steps[1:] / steps[:-1], q)
    assert x[-1] == pytest.approx(39, abs=1e-3)  # the outermost offset reaches dst // 2


def test_geometric_sequence_interpolation_is_an_interpolating_bicubic_spline():
    """A cubic in each offset, not symmetric in them (a transposed grid would show), is
    reproduced at the target offsets; rows of the table are the first offset, as mmseg's index.
    (Measured once against SciPy 1.13's interp2d(kind='cubic'), mmseg's call, removed in SciPy
    1.14: relative difference <= 1.0e-15 on random 27 -> 79, 27 -> 63 and 5 -> 13 tables.)"""
    src, dst = 9, 15
    x, dx = geometric_offsets(src, dst)

    def poly(r, c):
        return 0.01 * r ** 3 - 0.2 * r * c + 0.1 * c ** 2 + 0.3 * c

    rows, cols = np.meshgrid(x, x, indexing="ij")
    table = torch.from_numpy(np.stack([poly(rows, cols), -poly(rows, cols)], -1).reshape(-1, 2))
    out = geometric_sequence_interpolation(table.float(), src, dst)
    assert out.shape == (dst * dst, 2) and out.dtype == torch.float32
    rows, cols = np.meshgrid(dx, dx, indexing="ij")
    expected = torch.from_numpy(poly(rows, cols).reshape(-1)).float()
    torch.testing.assert_close(out[:, 0], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out[:, 1], -expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("key, value, message", [
    ("MODEL.BEIT.IMG_SIZE", [64, 64, 64], r"MODEL\.BEIT\.IMG_SIZE=\[64, 64, 64\]"),
    ("MODEL.BEIT.IMG_SIZE", [8, 8], r"MODEL\.BEIT\.IMG_SIZE=\[8, 8\] is smaller than"),
    ("MODEL.BEIT.NUM_HEADS", 3, r"EMBED_DIMS=32 is not a multiple of MODEL\.BEIT\.NUM_HEADS=3"),
    ("MODEL.BEIT.OUT_INDICES", [0, 4], r"OUT_INDICES=\[0, 4\]: \[4\] not among the layers 0\.\.3"),
    ("MODEL.NECK.RESCALES", [4, 1, 2, 0.5], r"MODEL\.NECK\.RESCALES=\[4, 1, 2, 0\.5\]"),
    ("MODEL.NECK.RESCALES", [2, 1, 0.5], r"RESCALES=\[2\.0, 1\.0, 0\.5\] needs one input per"),
    ("MODEL.NECK.IN_FEATURES", ["beit0", "beit1", "beit2", "res4"], r"\['res4'\] not among"),
])
def test_bad_config_values_are_named(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_model(_cfg("beit", opts=[key, value]))


def test_bad_imagenet_table_is_named():
    model = build_model(_cfg("beit"))
    sd = {"backbone.layers.1.attn.relative_position_bias_table": torch.zeros(30, 2)}
    with pytest.raises(ValueError, match=r"layers\.1\.attn\.relative_position_bias_table of "
                                         r"shape \(30, 2\).*IMG_SIZE=\[64, 64\]"):
        model.backbone.adapt_pretrained_state(sd, "backbone.")


@pytest.mark.parametrize("family", ["beit", "mae"])
def test_onnx_export_at_the_fixed_size_matches_pytorch(tmp_path, family):
    pytest.importorskip("onnxruntime")
    from export_models import randomize_
    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    # the window is fixed, so is the graph's input size (randomize_ calibrates at 64 x 96)
    model = randomize_(build_model(_cfg(family, (64, 96))))
    module = SegmentationExportModule(plain_for_export(model)).eval()
    path = str(tmp_path / "model.onnx")
    export(module, "onnx", path, torch.rand(1, 3, 64, 96) * 255, dynamic=False)
    ok, figures = verify_export(module, "onnx", path, [(1, 64, 96)])
    assert ok, figures
