"""The ViT backbone and MultiLevelNeck outside the logits parity (tests/parity/test_parity_vit.py):
outputs at sizes that are not multiples of the patch, the class-token and final-norm options,
the from-scratch init against mmseg's, ImageNet weights in timm's/DeiT's and mmseg's layouts
through MODEL.WEIGHTS (against vit2mmseg.py and mmseg's init_weights, pos_embed resized to the
model's grid), bad config values, and ONNX export with dynamic H x W."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint.backbones import convert_backbone_state_dict, detect_backbone_format
from d2seg.modeling.backbone.vit import VisionTransformer, resize_pos_embed
from test_checkpoint_formats import load_logged, one_thread  # noqa: F401  (autouse fixture)

YAML = REPO_CONFIGS / "_base_/models/upernet_vit-b16_mln.yaml"
# a narrow ViT: embed 32, 4 layers, 2 heads, pos_embed grid 4x4 (img_size 64)
WIDTH, LAYERS = 32, 4
OUTS = [f"vit{i}" for i in range(LAYERS)]
TINY_OPTS = ["MODEL.VIT.EMBED_DIMS", WIDTH, "MODEL.VIT.NUM_LAYERS", LAYERS,
             "MODEL.VIT.NUM_HEADS", 2, "MODEL.VIT.IMG_SIZE", [64, 64],
             "MODEL.VIT.OUT_INDICES", list(range(LAYERS)), "MODEL.NECK.IN_FEATURES", OUTS,
             "MODEL.NECK.OUT_CHANNELS", 16,
             "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
             "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.AUX_HEAD.CONVS_DIM", 8,
             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5]
NO_NECK = ["MODEL.NECK.NAME", "", "MODEL.SEM_SEG_HEAD.IN_FEATURES", OUTS,
           "MODEL.AUX_HEAD.IN_FEATURES", OUTS[-1:]]


def tiny_model(opts=()):
    return build_model(get_d2seg_cfg(YAML, TINY_OPTS + list(opts))).eval()


def timm_vit_state_dict(seed=0, grid=3, classes=10, width=WIDTH, layers=LAYERS):
    """Random weights named and shaped as timm's / DeiT's ``VisionTransformer`` state_dict
    (pos_embed of a ``grid`` x ``grid`` pre-training input, ``norm`` the final LayerNorm,
    ``head`` the ImageNet classifier)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def add(name, *shape):
        sd[name] = torch.randn(*shape, generator=g) / (shape[-1] if len(shape) > 1 else 10) ** .5

    add("cls_token", 1, 1, width)
    add("pos_embed", 1, grid * grid + 1, width)
    add("patch_embed.proj.weight", width, 3, 16, 16)
    add("patch_embed.proj.bias", width)
    for i in range(layers):
        b = f"blocks.{i}."
        for p in ("norm1", "norm2"):
            add(b + p + ".weight", width)
            add(b + p + ".bias", width)
        add(b + "attn.qkv.weight", 3 * width, width)
        add(b + "attn.qkv.bias", 3 * width)
        add(b + "attn.proj.weight", width, width)
        add(b + "attn.proj.bias", width)
        add(b + "mlp.fc1.weight", 4 * width, width)
        add(b + "mlp.fc1.bias", 4 * width)
        add(b + "mlp.fc2.weight", width, 4 * width)
        add(b + "mlp.fc2.bias", width)
    add("norm.weight", width)
    add("norm.bias", width)
    add("head.weight", classes, width)
    add("head.bias", classes)
    return sd


def _mmseg_vit(**kwargs):
    pytest.importorskip("mmseg")
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.models.backbones import VisionTransformer as RefViT

    args = dict(img_size=64, embed_dims=WIDTH, num_layers=LAYERS, num_heads=2,
                out_indices=tuple(range(LAYERS)), norm_cfg=dict(type="LN", eps=1e-6))
    args.update(kwargs)
    return RefViT(**args)


@pytest.mark.parametrize("final_norm", [False, True])
def test_imagenet_weights_load_as_mmseg_init_weights(tmp_path, final_norm, caplog):
    """A DeiT/timm file through MODEL.WEIGHTS: converted as vit2mmseg.py, its 3x3 pos_embed
    resized bicubically to the model's 4x4 grid as mmseg's init_weights does; the backbone then
    equals mmseg's VisionTransformer initialised from vit2mmseg's conversion of the same file
    (tensors and features at 65x97). The final ``norm`` fills ``ln1`` with FINAL_NORM, and is
    skipped without it (as mmseg's non-strict load ignores it)."""
    mmseg_peer = pytest.importorskip("mmseg_peer")
    sd = timm_vit_state_dict()
    assert detect_backbone_format(sd) == "vit_official"
    torch.save({"model": sd}, tmp_path / "deit_tiny.pth")  # as DeiT publishes them
    model = tiny_model(["MODEL.VIT.FINAL_NORM", final_norm])
    heads = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    with caplog.at_level("INFO", logger="d2seg.modeling.backbone.vit"):
        ckpt, log = load_logged(model, tmp_path / "deit_tiny.pth")
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    unused = [] if final_norm else ["backbone.ln1.bias", "backbone.ln1.weight"]
    assert sorted(report.skipped) == sorted(["head.bias", "head.weight"] + unused)
    assert "ViT / DeiT (timm)" in log
    assert "Resizing backbone.pos_embed from 3x3 to 4x4 (bicubic)" in caplog.text
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in heads.items())
    assert set(report.loaded) == {k for k in state if k.startswith("backbone.")}

    vit2mmseg = mmseg_peer.mmseg_tool("model_converters/vit2mmseg.py")
    torch.save(vit2mmseg.convert_vit(sd), tmp_path / "converted.pth")
    ref = _mmseg_vit(final_norm=final_norm,
                     init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "converted.pth")))
    ref.init_weights()
    ref.eval()
    theirs = ref.state_dict()
    assert set(theirs) == {k[len("backbone."):] for k in state if k.startswith("backbone.")}
    for k, v in theirs.items():
        torch.testing.assert_close(state["backbone." + k], v, rtol=0, atol=1e-6)
    assert theirs["pos_embed"].shape == (1, 17, WIDTH)
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        expected, got = ref(x), model.backbone(x)
    for i, e in enumerate(expected):
        torch.testing.assert_close(got[f"vit{i}"], e, rtol=1e-4, atol=1e-4 * e.abs().max())


def test_mmseg_converted_vit_pretrain_loads(tmp_path, caplog):
    """vit2mmseg's output (``layers.*``, ``ln1``) through MODEL.WEIGHTS, here under mmcls's
    ``backbone.`` prefix; same pos_embed grid: loaded as it is."""
    pytest.importorskip("mmseg_peer")
    from mmseg_peer import mmseg_tool

    sd = mmseg_tool("model_converters/vit2mmseg.py").convert_vit(timm_vit_state_dict(1, grid=4))
    assert detect_backbone_format(sd) == "vit"
    torch.save({"state_dict": {"backbone." + k: v for k, v in sd.items()}},
               tmp_path / "vit_mmcls.pth")
    model = tiny_model(["MODEL.VIT.FINAL_NORM", True])
    with caplog.at_level("INFO", logger="d2seg.modeling.backbone.vit"):
        ckpt, log = load_logged(model, tmp_path / "vit_mmcls.pth")
    assert ckpt.last_report.backbone_only and not ckpt.last_report.errors
    assert "ViT / DeiT (mmseg's vit2mmseg)" in log and "Resizing" not in caplog.text
    state = model.state_dict()
    assert all(torch.equal(v, state["backbone." + k]) for k, v in sd.items())


def test_official_conversion_equals_vit2mmseg():
    mmseg_peer = pytest.importorskip("mmseg_peer")
    sd = timm_vit_state_dict(2)
    theirs = mmseg_peer.mmseg_tool("model_converters/vit2mmseg.py").convert_vit(sd)
    ours, skipped, name = convert_backbone_state_dict(sd)
    assert name == "ViT / DeiT (timm)" and skipped == ["head.bias", "head.weight"]
    assert ours.keys() == {"backbone." + k for k in theirs}
    assert all(torch.equal(ours["backbone." + k], v) for k, v in theirs.items())


def test_pos_embed_resize_equals_mmseg():
    pytest.importorskip("mmseg")
    ref = _mmseg_vit()
    pos = torch.randn(1, 1 + 6 * 5, 8)
    for mode in ("bicubic", "bilinear"):
        expected = ref.resize_pos_embed(pos, (7, 3), (6, 5), mode)
        assert torch.equal(resize_pos_embed(pos, (7, 3), (6, 5), mode), expected)


def test_from_scratch_init_equals_mmseg():
    """mmseg's VisionTransformer.init_weights without a checkpoint: tokens and Linears
    trunc-normal(.02), FFN biases N(0, 1e-6), other Linear biases 0, the patch conv
    kaiming-normal fan_in with bias 0, LayerNorms 1/0, the packed in_proj xavier-uniform / 0;
    the neck's convs xavier-uniform with bias 0 (mmseg's MultiLevelNeck.init_weights)."""
    pytest.importorskip("mmseg")
    torch.manual_seed(0)
    ref = _mmseg_vit(embed_dims=64, num_layers=2, patch_norm=True, final_norm=True,
                     out_indices=(0, 1))
    ref.init_weights()
    theirs = ref.state_dict()
    ours = VisionTransformer(img_size=(64, 64), embed_dims=64, num_layers=2, num_heads=2,
                             out_indices=(0, 1), patch_norm=True, final_norm=True,
                             norm_eps=1e-6).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    checked = 0
    for k, v in theirs.items():
        if k.endswith("ffn.layers.0.0.bias") or k.endswith("ffn.layers.1.bias"):
            for t in (v, ours[k]):
                assert 0 < t.abs().max() < 1e-5, k
        elif v.dim() == 1:
            assert torch.equal(ours[k], v), k  # constants: biases 0, norms 1/0
        else:  # same distribution: std within 15 % and the expected value
            expected = {"pos_embed": 0.02, "cls_token": 0.02}.get(k)
            if k.endswith("in_proj_weight"):
                expected = (6 / (64 + 3 * 64)) ** 0.5 / 3 ** 0.5  # xavier-uniform of 192 x 64
            elif k == "patch_embed.projection.weight":
                expected = (2 / (3 * 16 * 16)) ** 0.5  # kaiming-normal, fan_in
            elif k.endswith(".weight"):
                expected = 0.02
            for t in (v, ours[k]):
                assert abs(t.std().item() / expected - 1) < 0.15, k
            checked += 1
    assert checked >= 10

    neck = tiny_model().neck
    for name, p in neck.named_parameters():
        if name.endswith("bias"):
            assert not p.any(), name
        else:  # xavier-uniform: U(+-sqrt(6 / (fan_in + fan_out)))
            fan = p[0].numel() + p.shape[0] * p[0, 0].numel()
            bound = (6 / fan) ** 0.5
            assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound, name


def test_outputs_at_odd_sizes_and_token_options():
    """65x97 pads to 80x112: 5x7 maps at stride 16 (pos_embed's 4x4 grid resized); the neck at
    strides 4..32; output_cls_token adds vit{i}_cls; without with_cls_token the layers see the
    patch tokens only (other features)."""
    model = tiny_model()
    x = torch.randn(2, 3, 65, 97)
    assert {k: (s.channels, s.stride) for k, s in model.backbone.output_shape().items()} == {
        f: (WIDTH, 16) for f in OUTS}
    assert {k: (s.channels, s.stride) for k, s in model.neck.output_shape().items()} == {
        "mln0": (16, 4), "mln1": (16, 8), "mln2": (16, 16), "mln3": (16, 32)}
    with torch.no_grad():
        feats = model.backbone(x)
        neck = model.neck(feats)
        logits = model.encode_decode(x)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {f: (2, WIDTH, 5, 7) for f in OUTS}
    assert {k: tuple(v.shape[-2:]) for k, v in neck.items()} == {
        "mln0": (20, 28), "mln1": (10, 14), "mln2": (5, 7), "mln3": (2, 3)}
    assert logits.shape == (2, 5, 65, 97)

    with_cls = tiny_model(["MODEL.VIT.OUTPUT_CLS_TOKEN", True])
    with_cls.load_state_dict(model.state_dict())
    without = tiny_model(["MODEL.VIT.WITH_CLS_TOKEN", False])
    without.load_state_dict(model.state_dict())
    with torch.no_grad():
        cls_feats = with_cls.backbone(x)
        no_cls = without.backbone(x)
        assert with_cls.encode_decode(x).shape == (2, 5, 65, 97)
    assert set(cls_feats) == set(OUTS) | {f"{f}_cls" for f in OUTS}
    assert all(torch.equal(cls_feats[f], feats[f]) for f in OUTS)
    assert cls_feats["vit3_cls"].shape == (2, WIDTH)
    assert set(no_cls) == set(OUTS) and no_cls["vit0"].shape == feats["vit0"].shape
    assert not torch.allclose(no_cls["vit0"], feats["vit0"], atol=1e-3)

    # final_norm: the last layer's output only, LayerNorm'ed over channels
    final = tiny_model(["MODEL.VIT.FINAL_NORM", True])
    state = dict(model.state_dict())
    state.update({"backbone.ln1.weight": torch.ones(WIDTH),
                  "backbone.ln1.bias": torch.zeros(WIDTH)})
    final.load_state_dict(state)
    with torch.no_grad():
        normed = final.backbone(x)
    assert all(torch.equal(normed[f], feats[f]) for f in OUTS[:-1])
    torch.testing.assert_close(
        normed["vit3"], torch.nn.functional.layer_norm(
            feats["vit3"].permute(0, 2, 3, 1), (WIDTH,), eps=1e-6).permute(0, 3, 1, 2))

    # the plain DeiT configs: no neck, the heads on the 1/16 maps
    plain = tiny_model(NO_NECK)
    assert plain.neck is None
    with torch.no_grad():
        assert plain.encode_decode(x).shape == (2, 5, 65, 97)


@pytest.mark.parametrize("opts, message", [
    (["MODEL.VIT.NUM_HEADS", 3], "multiple of MODEL.VIT.NUM_HEADS"),
    (["MODEL.VIT.OUT_INDICES", [1, 4]], r"OUT_INDICES=\[1, 4\]: \[4\] not among"),
    (["MODEL.VIT.IMG_SIZE", [8, 64]], "IMG_SIZE"),
    (["MODEL.VIT.WITH_CLS_TOKEN", False, "MODEL.VIT.OUTPUT_CLS_TOKEN", True], "WITH_CLS_TOKEN"),
    (["MODEL.VIT.INTERPOLATE_MODE", "cubic"], "INTERPOLATE_MODE='cubic'"),
    (["MODEL.NECK.SCALES", [4.0, 2.0, 1.0]], "MODEL.NECK.SCALES"),
    (["MODEL.NECK.IN_FEATURES", ["vit2", "vit9"]], r"\['vit9'\] not among"),
    (["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["vit3"]], "vit3"),
])
def test_bad_config_values_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(opts)


def test_bad_pos_embed_in_imagenet_weights_is_named(tmp_path):
    sd = timm_vit_state_dict()
    sd["pos_embed"] = sd["pos_embed"][:, :-1]  # 9 tokens: no square grid + class slot
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"backbone.pos_embed of shape \(1, 9, 32\)"):
        load_logged(tiny_model(), tmp_path / "bad.pth")


def test_onnx_dynamic_export_matches_pytorch(tmp_path):
    """The pos_embed resize is in the graph (at every size: the identity where the grid is
    pos_embed's own), as are the patch padding and the neck's resizes."""
    pytest.importorskip("onnxruntime")
    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export
    from export_models import randomize_

    model = randomize_(tiny_model())
    module = SegmentationExportModule(plain_for_export(model)).eval()
    path = str(tmp_path / "model.onnx")
    export(module, "onnx", path, torch.rand(1, 3, 64, 96) * 255, dynamic=True)
    # the pos_embed grid's own size (4x4 tokens), other batch and sizes not multiples of 16
    ok, figures = verify_export(module, "onnx", path, [(1, 64, 96), (1, 64, 64),
                                                       (2, 97, 131), (1, 45, 50)])
    assert ok, figures
