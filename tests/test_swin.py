"""The Swin Transformer backbone outside the logits parity (tests/parity/test_parity_swin.py):
ImageNet weights in Microsoft's and mmseg's layouts through MODEL.WEIGHTS (against mmseg's
swin2mmseg.py, and PatchMerging against the original's concatenation), the from-scratch init,
bad config values, output selection, activation checkpointing, and ONNX export with dynamic
H x W."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint.backbones import convert_backbone_state_dict, detect_backbone_format
from d2seg.modeling.backbone.swin import PatchMerging, relative_position_index
from test_checkpoint_formats import load_logged, one_thread  # noqa: F401  (autouse fixture)

YAML = REPO_CONFIGS / "_base_/models/upernet_swin.yaml"
# a narrow Swin: widths 8, 16, 32, 64; window 3; stage 1 has a shifted block (an attn_mask)
TINY = dict(embed_dims=8, depths=[2, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=3,
            mlp_ratio=4)
TINY_OPTS = ["MODEL.SWIN.EMBED_DIMS", 8, "MODEL.SWIN.DEPTHS", TINY["depths"],
             "MODEL.SWIN.NUM_HEADS", TINY["num_heads"], "MODEL.SWIN.WINDOW_SIZE", 3,
             "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
             "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.AUX_HEAD.CONVS_DIM", 8,
             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5]


def tiny_model(opts=()):
    return build_model(get_d2seg_cfg(YAML, TINY_OPTS + list(opts))).eval()


def official_relative_position_index(ws):
    """Microsoft's WindowAttention construction of the index."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    rel[:, :, 0] *= 2 * ws - 1
    return rel.sum(-1)


def official_swin_state_dict(seed=0, classes=10):
    """Random weights named and shaped as Microsoft's ``SwinTransformer`` state_dict (its
    buffers ``relative_position_index`` and the shifted blocks' ``attn_mask`` included; ``norm``
    the final LayerNorm and ``head`` the ImageNet classifier)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def add(name, *shape):
        sd[name] = torch.randn(*shape, generator=g) / (shape[1] if len(shape) > 1 else 10) ** 0.5

    ws, c = TINY["window_size"], TINY["embed_dims"]
    add("patch_embed.proj.weight", c, 3, 4, 4)
    for p in ("proj.bias", "norm.weight", "norm.bias"):
        add(f"patch_embed.{p}", c)
    for i, (depth, heads) in enumerate(zip(TINY["depths"], TINY["num_heads"])):
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            for p in ("norm1", "norm2"):
                add(b + p + ".weight", c)
                add(b + p + ".bias", c)
            add(b + "attn.relative_position_bias_table", (2 * ws - 1) ** 2, heads)
            sd[b + "attn.relative_position_index"] = official_relative_position_index(ws)
            add(b + "attn.qkv.weight", 3 * c, c)
            add(b + "attn.qkv.bias", 3 * c)
            add(b + "attn.proj.weight", c, c)
            add(b + "attn.proj.bias", c)
            add(b + "mlp.fc1.weight", 4 * c, c)
            add(b + "mlp.fc1.bias", 4 * c)
            add(b + "mlp.fc2.weight", c, 4 * c)
            add(b + "mlp.fc2.bias", c)
            if j % 2:  # the shifted blocks' mask buffer (its size: the pre-training input's)
                sd[b + "attn_mask"] = torch.zeros(4, ws * ws, ws * ws)
        if i < len(TINY["depths"]) - 1:
            add(f"layers.{i}.downsample.reduction.weight", 2 * c, 4 * c)
            add(f"layers.{i}.downsample.norm.weight", 4 * c)
            add(f"layers.{i}.downsample.norm.bias", 4 * c)
            c *= 2
    add("norm.weight", c)
    add("norm.bias", c)
    add("head.weight", classes, c)
    add("head.bias", classes)
    return sd


UNUSED = ["head.bias", "head.weight", "layers.0.blocks.1.attn_mask", "layers.2.blocks.1.attn_mask",
          "norm.bias", "norm.weight"]


def test_official_swin_weights_load_as_swin2mmseg_converts_them(tmp_path):
    sd = official_swin_state_dict()
    assert detect_backbone_format(sd) == "swin_official"
    torch.save({"model": sd}, tmp_path / "swin_tiny.pth")  # as Microsoft publishes them
    model = tiny_model()
    heads = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    ckpt, log = load_logged(model, tmp_path / "swin_tiny.pth")
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    assert sorted(report.skipped) == UNUSED
    assert "Swin Transformer (Microsoft)" in log
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in heads.items())
    # every backbone tensor came from the file but the per-output norm0..3, which an ImageNet
    # model does not have: mmseg leaves them as initialised (LayerNorm 1/0), and so does d2seg
    backbone = {k for k in state if k.startswith("backbone.")}
    out_norms = {k for k in backbone if k.startswith("backbone.norm")}
    assert len(out_norms) == 8 and set(report.kept_init) >= out_norms
    assert set(report.loaded) == backbone - out_norms
    b = "backbone.stages.0.blocks.1."
    assert torch.equal(state[b + "attn.w_msa.qkv.weight"], sd["layers.0.blocks.1.attn.qkv.weight"])
    assert torch.equal(state[b + "ffn.layers.0.0.weight"], sd["layers.0.blocks.1.mlp.fc1.weight"])
    assert torch.equal(state[b + "ffn.layers.1.bias"], sd["layers.0.blocks.1.mlp.fc2.bias"])
    assert torch.equal(state["backbone.patch_embed.projection.weight"],
                       sd["patch_embed.proj.weight"])
    # the file's index equals the one d2seg builds
    assert torch.equal(state[b + "attn.w_msa.relative_position_index"],
                       relative_position_index(3))


def test_relative_position_index_equals_microsofts():
    for ws in (2, 3, 7, 12):
        assert torch.equal(relative_position_index(ws), official_relative_position_index(ws))


def test_patch_merging_with_converted_weights_equals_the_original():
    """Microsoft's PatchMerging concatenates x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2],
    x[1::2, 1::2]; d2seg's (mmseg's) follows nn.Unfold: the converted weights compute the same,
    odd sizes (padded) included."""
    sd = official_swin_state_dict(seed=2)
    ours, _, _ = convert_backbone_state_dict(sd)
    merging = PatchMerging(8, 16, 2, norm=True)
    merging.load_state_dict({k[len("backbone.stages.0.downsample."):]: v for k, v in ours.items()
                             if k.startswith("backbone.stages.0.downsample.")})
    x = torch.randn(2, 7, 9, 8)  # B x H x W x C, odd: padded to 8 x 10 by both
    with torch.no_grad():
        got, hw = merging(x.reshape(2, 63, 8), (7, 9))
        xp = F.pad(x, (0, 0, 0, 1, 0, 1))
        cat = torch.cat([xp[:, 0::2, 0::2], xp[:, 1::2, 0::2], xp[:, 0::2, 1::2],
                         xp[:, 1::2, 1::2]], -1).reshape(2, -1, 32)
        p = "layers.0.downsample."
        expected = F.layer_norm(cat, (32,), sd[p + "norm.weight"], sd[p + "norm.bias"])
        expected = expected @ sd[p + "reduction.weight"].t()
    assert hw == (4, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_official_swin_conversion_equals_mmseg_swin2mmseg():
    """d2seg's conversion against mmseg's own tools/model_converters/swin2mmseg.py (which keeps
    ``norm.*`` and ``attn_mask``: mmseg's non-strict loading then ignores them), and the
    converted backbone's features against mmseg's SwinTransformer with its conversion."""
    mmseg_peer = pytest.importorskip("mmseg_peer")
    pytest.importorskip("mmseg")
    swin2mmseg = mmseg_peer.mmseg_tool("model_converters/swin2mmseg.py")
    from mmseg.models.backbones import SwinTransformer

    sd = official_swin_state_dict(seed=1)
    theirs = swin2mmseg.convert_swin(sd)
    ours, skipped, name = convert_backbone_state_dict(sd)
    assert skipped == UNUSED and name == "Swin Transformer (Microsoft)"
    ignored = {"norm.weight", "norm.bias", "stages.0.blocks.1.attn_mask",
               "stages.2.blocks.1.attn_mask"}
    assert ignored <= set(theirs)
    assert set(ours) == {"backbone." + k for k in theirs if k not in ignored}
    assert all(torch.equal(ours["backbone." + k], v) for k, v in theirs.items()
               if k not in ignored)

    ref = SwinTransformer(**TINY)
    ref.eval()  # (mmseg's SwinTransformer.train returns None)
    ref.load_state_dict({k: v for k, v in theirs.items() if k not in ignored}, strict=False)
    model = tiny_model()
    model.load_state_dict(ours, strict=False)
    # the per-output norms are not in the ImageNet weights: the same values on both sides
    model.backbone.load_state_dict({k: v for k, v in ref.state_dict().items()
                                    if k.startswith("norm")}, strict=False)
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        expected, got = ref(x), model.backbone(x)
    for i, e in enumerate(expected):
        torch.testing.assert_close(got[f"swin{i + 1}"], e, rtol=1e-4, atol=1e-4 * e.abs().max())


def test_mmseg_converted_swin_pretrain_loads(tmp_path):
    """mmseg's published Swin weights (swin2mmseg's output): ``stages.*`` keys, loaded as they
    are; the ImageNet ``norm.*`` and ``attn_mask`` that swin2mmseg keeps are skipped."""
    source = tiny_model()
    sd = {k[len("backbone."):]: v.clone() for k, v in source.state_dict().items()
          if k.startswith("backbone.")}
    sd["norm.weight"], sd["norm.bias"] = torch.ones(64), torch.zeros(64)
    sd["stages.0.blocks.1.attn_mask"] = torch.zeros(4, 9, 9)
    assert detect_backbone_format(sd) == "swin"
    torch.save({"state_dict": sd}, tmp_path / "swin_mmseg.pth")
    model = tiny_model(["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7])
    ckpt, log = load_logged(model, tmp_path / "swin_mmseg.pth")
    assert ckpt.last_report.backbone_only and not ckpt.last_report.errors
    assert sorted(ckpt.last_report.skipped) == ["norm.bias", "norm.weight",
                                                "stages.0.blocks.1.attn_mask"]
    assert "Swin Transformer (mmseg)" in log
    state = model.state_dict()
    assert all(torch.equal(v, state["backbone." + k]) for k, v in sd.items()
               if "backbone." + k in state)


def test_from_scratch_init_equals_mmseg():
    """mmseg's SwinTransformer.init_weights without a checkpoint: trunc-normal(.02) Linears with
    zero biases, LayerNorms 1/0; it does not call WindowMSA.init_weights, so the relative
    position bias tables stay 0; the patch conv keeps PyTorch's default init."""
    pytest.importorskip("mmseg")
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.models.backbones import SwinTransformer

    torch.manual_seed(0)
    ref = SwinTransformer(embed_dims=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8])
    ref.init_weights()
    ours = build_model(get_d2seg_cfg(YAML, ["MODEL.SEM_SEG_HEAD.NORM", "BN",
                                            "MODEL.AUX_HEAD.NORM", "BN",
                                            "MODEL.SWIN.EMBED_DIMS", 32,
                                            "MODEL.SWIN.DEPTHS", [1, 1, 1, 1],
                                            "MODEL.SWIN.NUM_HEADS", [1, 2, 4, 8]])).backbone
    ours = ours.state_dict()
    theirs = ref.state_dict()
    assert set(ours) == set(theirs)
    checked = 0
    for k, v in theirs.items():
        if k == "patch_embed.projection.bias":  # PyTorch's default: U(+-1/sqrt(fan_in))
            assert ours[k].abs().max() <= 48 ** -0.5 and ours[k].std() > 0.02
        elif v.dim() == 1 or k.endswith(("position_bias_table", "relative_position_index")):
            assert torch.equal(ours[k], v), k  # constants (biases, norms, tables), the index
        elif v.numel() >= 4096:  # same distribution (spread within 15 %)
            for t in (v, ours[k]):
                assert abs(t.std().item() / v.std().item() - 1) < 0.15, k
                assert abs(t.mean().item()) < 0.1 * v.std().item(), k
            if k.endswith(".weight") and "projection" not in k:
                assert abs(ours[k].std().item() - 0.02) < 0.003, k
            checked += 1
    assert checked > 10
    assert not ours["stages.0.blocks.0.attn.w_msa.relative_position_bias_table"].any()


@pytest.mark.parametrize("opts, message", [
    (["MODEL.SWIN.NUM_HEADS", [1, 2, 2]], "one value per stage"),
    (["MODEL.SWIN.STRIDES", [2, 2, 2, 2]], "PATCH_SIZE"),
    (["MODEL.SWIN.NUM_HEADS", [1, 3, 2, 4]], "multiple of its NUM_HEADS"),
    (["MODEL.SWIN.OUT_FEATURES", ["res5"]], "not among"),
    (["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res5"]], "not produced by the backbone"),
])
def test_bad_config_values_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(opts)


def test_output_features_and_strides():
    model = tiny_model(["MODEL.SWIN.OUT_FEATURES", ["swin1", "swin3"],
                        "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["swin1", "swin3"]])
    shapes = model.backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {"swin1": (8, 4),
                                                                     "swin3": (32, 16)}
    # only the output stages have their norm (mmseg's out_indices)
    assert {n for n, _ in model.backbone.named_children() if n.startswith("norm")} == {"norm0",
                                                                                     "norm2"}
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 45, 70))
        logits = model.encode_decode(torch.randn(1, 3, 45, 70))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"swin1": (1, 8, 12, 18),
                                                             "swin3": (1, 32, 3, 5)}
    assert logits.shape == (1, 5, 45, 70)


def randomized_model(opts=()):
    """Every weight random (the bias tables too: they start at 0), then BN statistics and
    classifiers as the export tests set them."""
    from export_models import randomize_

    model = tiny_model(opts)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() if p.dim() > 1 else 10) ** .5)
    return randomize_(model)


def test_activation_checkpointing_keeps_the_gradients():
    model = randomized_model(["MODEL.SWIN.DROP_PATH_RATE", 0.0]).backbone.train()
    assert not any(b.with_cp for s in model.stages for b in s.blocks)
    x = torch.randn(2, 3, 40, 52)
    grads = []
    for with_cp in (False, True):
        model.zero_grad()
        for stage in model.stages:
            for block in stage.blocks:
                block.with_cp = with_cp
        sum(f.square().mean() for f in model(x).values()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k, g in grads[0].items():
        torch.testing.assert_close(grads[1][k], g, rtol=1e-5, atol=1e-6 * g.abs().max())


def test_onnx_dynamic_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    model = randomized_model()
    module = SegmentationExportModule(plain_for_export(model)).eval()
    path = str(tmp_path / "model.onnx")
    export(module, "onnx", path, torch.rand(1, 3, 64, 96) * 255, dynamic=True)
    # other batch and sizes that are multiples of neither 32 nor the window (padding at every
    # stage, another number of shifted windows and another mask)
    ok, figures = verify_export(module, "onnx", path, [(1, 64, 96), (2, 97, 131), (1, 45, 50)])
    assert ok, figures
