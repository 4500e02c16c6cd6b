"""SegFormer's MiT backbone outside the logits parity (tests/parity/test_parity_segformer.py):
ImageNet weights in NVlabs' and mmseg's layouts through MODEL.WEIGHTS, the from-scratch init,
bad config values, and ONNX export with dynamic H x W."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint.backbones import convert_backbone_state_dict, detect_backbone_format
from test_checkpoint_formats import load_logged, one_thread  # noqa: F401  (autouse fixture)

YAML = REPO_CONFIGS / "_base_/models/segformer_mit-b0.yaml"
# a narrow MiT: stage widths 8 * heads = 8, 16, 24, 32; 2 layers in stage 1 (drop_path schedule)
TINY = dict(embed_dims=8, num_heads=[1, 2, 3, 4], num_layers=[2, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
            patch_sizes=[7, 3, 3, 3], mlp_ratio=4)
TINY_OPTS = ["MODEL.MIT.EMBED_DIMS", 8, "MODEL.MIT.NUM_HEADS", TINY["num_heads"],
             "MODEL.MIT.NUM_LAYERS", TINY["num_layers"], "MODEL.SEM_SEG_HEAD.NORM", "BN",
             "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5]


def tiny_model(opts=()):
    return build_model(get_d2seg_cfg(YAML, TINY_OPTS + list(opts))).eval()


def official_mit_state_dict(seed=0, classes=10):
    """Random weights named and shaped as NVlabs' SegFormer ``MixVisionTransformer`` (Linear q,
    kv, proj and fc1/fc2; ``dwconv.dwconv`` depthwise 3x3; ``head`` the ImageNet classifier)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def add(name, *shape):
        sd[name] = torch.randn(*shape, generator=g) / (shape[1] if len(shape) > 1 else 10) ** 0.5

    cin = 3
    for i, (heads, n, sr, k) in enumerate(zip(TINY["num_heads"], TINY["num_layers"],
                                              TINY["sr_ratios"], TINY["patch_sizes"]), 1):
        c, hidden = TINY["embed_dims"] * heads, TINY["embed_dims"] * heads * TINY["mlp_ratio"]
        add(f"patch_embed{i}.proj.weight", c, cin, k, k)
        for p in ("proj.bias", "norm.weight", "norm.bias"):
            add(f"patch_embed{i}.{p}", c)
        for j in range(n):
            b = f"block{i}.{j}."
            for p in ("norm1", "norm2"):
                add(b + p + ".weight", c)
                add(b + p + ".bias", c)
            add(b + "attn.q.weight", c, c)
            add(b + "attn.q.bias", c)
            add(b + "attn.kv.weight", 2 * c, c)
            add(b + "attn.kv.bias", 2 * c)
            add(b + "attn.proj.weight", c, c)
            add(b + "attn.proj.bias", c)
            if sr > 1:
                add(b + "attn.sr.weight", c, c, sr, sr)
                for p in ("sr.bias", "norm.weight", "norm.bias"):
                    add(b + "attn." + p, c)
            add(b + "mlp.fc1.weight", hidden, c)
            add(b + "mlp.fc1.bias", hidden)
            add(b + "mlp.dwconv.dwconv.weight", hidden, 1, 3, 3)
            add(b + "mlp.dwconv.dwconv.bias", hidden)
            add(b + "mlp.fc2.weight", c, hidden)
            add(b + "mlp.fc2.bias", c)
        add(f"norm{i}.weight", c)
        add(f"norm{i}.bias", c)
        cin = c
    add("head.weight", classes, cin)
    add("head.bias", classes)
    return sd


def test_official_mit_weights_load_as_mit2mmseg_converts_them(tmp_path):
    sd = official_mit_state_dict()
    assert detect_backbone_format(sd) == "mit_official"
    torch.save(sd, tmp_path / "mit_tiny.pth")  # a bare state_dict, as NVlabs publishes it
    model = tiny_model()
    heads = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    ckpt, log = load_logged(model, tmp_path / "mit_tiny.pth")
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    assert sorted(report.skipped) == ["head.bias", "head.weight"]
    assert "SegFormer MiT (NVlabs)" in log
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in heads.items())
    # every backbone tensor came from the file: q and kv packed, Linear -> 1x1 conv
    backbone = {k for k in state if k.startswith("backbone.")}
    assert set(report.loaded) == backbone
    b = "backbone.layers.0.1.1."
    assert torch.equal(state[b + "attn.attn.in_proj_weight"],
                       torch.cat([sd["block1.1.attn.q.weight"], sd["block1.1.attn.kv.weight"]]))
    assert torch.equal(state[b + "attn.attn.in_proj_bias"],
                       torch.cat([sd["block1.1.attn.q.bias"], sd["block1.1.attn.kv.bias"]]))
    assert torch.equal(state[b + "attn.attn.out_proj.weight"], sd["block1.1.attn.proj.weight"])
    assert torch.equal(state[b + "ffn.layers.0.weight"][:, :, 0, 0], sd["block1.1.mlp.fc1.weight"])
    assert torch.equal(state[b + "ffn.layers.1.weight"], sd["block1.1.mlp.dwconv.dwconv.weight"])
    assert torch.equal(state[b + "ffn.layers.4.weight"][:, :, 0, 0], sd["block1.1.mlp.fc2.weight"])
    assert torch.equal(state["backbone.layers.3.0.projection.weight"],
                       sd["patch_embed4.proj.weight"])
    assert torch.equal(state["backbone.layers.2.2.bias"], sd["norm3.bias"])


def test_official_mit_conversion_equals_mmseg_mit2mmseg():
    """d2seg's conversion against mmseg's own tools/model_converters/mit2mmseg.py, and the
    converted backbone's features against mmseg's MixVisionTransformer with its conversion."""
    mmseg_peer = pytest.importorskip("mmseg_peer")
    pytest.importorskip("mmseg")
    import importlib.util
    import os

    mmseg_peer.stub_mmcv_ext()
    from mmseg.models.backbones import MixVisionTransformer

    tool = os.path.join(os.path.dirname(mmseg_peer.mmseg_config_root()), "tools",
                        "model_converters", "mit2mmseg.py")
    spec = importlib.util.spec_from_file_location("mit2mmseg", tool)
    mit2mmseg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mit2mmseg)

    sd = official_mit_state_dict(seed=1)
    theirs = mit2mmseg.convert_mit(sd)
    ours, skipped, _ = convert_backbone_state_dict(sd)
    assert skipped == ["head.bias", "head.weight"]
    assert set(ours) == {"backbone." + k for k in theirs}
    assert all(torch.equal(ours["backbone." + k], v) for k, v in theirs.items())

    ref = MixVisionTransformer(embed_dims=8, num_heads=TINY["num_heads"],
                               num_layers=TINY["num_layers"]).eval()
    ref.load_state_dict(theirs, strict=True)
    model = tiny_model()
    model.load_state_dict(ours, strict=False)
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        expected, got = ref(x), model.backbone(x)
    for i, e in enumerate(expected):
        torch.testing.assert_close(got[f"mit{i + 1}"], e, rtol=1e-4, atol=1e-4 * e.abs().max())


def test_mmseg_converted_mit_pretrain_loads(tmp_path):
    """mmseg's published MiT weights (mit2mmseg's output): ``layers.*`` keys, loaded as they are."""
    source = tiny_model()
    sd = {k[len("backbone."):]: v.clone() for k, v in source.state_dict().items()
          if k.startswith("backbone.")}
    assert detect_backbone_format(sd) == "mit"
    torch.save(sd, tmp_path / "mit_mmseg.pth")
    model = tiny_model(["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7])
    ckpt, log = load_logged(model, tmp_path / "mit_mmseg.pth")
    assert ckpt.last_report.backbone_only and not ckpt.last_report.errors
    assert "SegFormer MiT (mmseg)" in log
    state = model.state_dict()
    assert all(torch.equal(v, state["backbone." + k]) for k, v in sd.items())


def test_from_scratch_init_equals_mmseg():
    """mmseg's MixVisionTransformer.init_weights: trunc-normal(.02) Linears, N(0, 2/fan_out)
    convs (depthwise: fan_out / groups), LayerNorms 1/0, zero biases; the attention's in_proj
    keeps nn.MultiheadAttention's xavier-uniform init."""
    pytest.importorskip("mmseg")
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.models.backbones import MixVisionTransformer

    torch.manual_seed(0)
    ref = MixVisionTransformer(embed_dims=32, num_heads=[1, 2, 5, 8], num_layers=[1, 1, 1, 1])
    ref.init_weights()
    ours = build_model(get_d2seg_cfg(YAML, ["MODEL.SEM_SEG_HEAD.NORM", "BN",
                                            "MODEL.MIT.NUM_LAYERS", [1, 1, 1, 1]])).backbone
    ours = ours.state_dict()
    theirs = ref.state_dict()
    assert set(ours) == set(theirs)
    checked = 0
    for k, v in theirs.items():
        if v.dim() == 1:  # biases and norms: mmseg's constants exactly
            assert torch.equal(ours[k], v), k
        elif v.numel() >= 4096:  # same distribution (spread within 15 %)
            for t in (v, ours[k]):
                assert abs(t.std().item() / v.std().item() - 1) < 0.15, k
                assert abs(t.mean().item()) < 0.1 * v.std().item(), k
            if k.endswith(("out_proj.weight",)):  # truncated at +-2 (never binds at .02)
                assert abs(ours[k].std().item() - 0.02) < 0.003, k
            checked += 1
    assert checked > 10


@pytest.mark.parametrize("opts, message", [
    (["MODEL.MIT.NUM_HEADS", [1, 2, 5]], "one value per stage"),
    (["MODEL.MIT.OUT_FEATURES", ["res5"]], "not among"),
    (["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res5"]], "not produced by the backbone"),
])
def test_bad_config_values_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(opts)


def test_output_features_and_strides():
    model = tiny_model(["MODEL.MIT.OUT_FEATURES", ["mit1", "mit3"],
                        "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["mit1", "mit3"]])
    shapes = model.backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {"mit1": (8, 4),
                                                                     "mit3": (24, 16)}
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 45, 70))
        logits = model.encode_decode(torch.randn(1, 3, 45, 70))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"mit1": (1, 8, 12, 18),
                                                             "mit3": (1, 24, 3, 5)}
    assert logits.shape == (1, 5, 45, 70)


def test_onnx_dynamic_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from export_models import randomize_
    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    model = randomize_(tiny_model())
    module = SegmentationExportModule(plain_for_export(model)).eval()
    path = str(tmp_path / "model.onnx")
    export(module, "onnx", path, torch.rand(1, 3, 64, 96) * 255, dynamic=True)
    # other batch and sizes that are not multiples of 32 (odd at every stride)
    ok, figures = verify_export(module, "onnx", path, [(1, 64, 96), (2, 97, 131)])
    assert ok, figures
