"""The Twins backbones (PCPVT, SVT) outside the UPerNet logits parity
(tests/parity/test_parity_twins.py): LSA against mmseg's for every padding case (none, one pad 0
-- mmseg's mask bug --, both > 0), outputs at odd sizes, ImageNet weights in the official and
mmseg's layouts through MODEL.WEIGHTS (against mmseg's twins2mmseg.py), the from-scratch init,
bad config values, and ONNX export with dynamic H x W."""
import re

import pytest
import torch

from detectron2.modeling import build_backbone, build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint.backbones import convert_backbone_state_dict, detect_backbone_format
from d2seg.modeling.backbone.twins import LocallyGroupedSelfAttention
from test_checkpoint_formats import load_logged, one_thread  # noqa: F401  (autouse fixture)

YAML = REPO_CONFIGS / "_base_/models/twins_pcpvt-s_upernet.yaml"
# narrow: widths 8, 16, 24, 32; blocks 2, 1, 2, 1 (SVT: LSA+GSA, LSA, LSA+GSA, LSA); window 3
TINY = dict(embed_dims=[8, 16, 24, 32], num_heads=[1, 2, 3, 4], depths=[2, 1, 2, 1],
            mlp_ratios=[2, 2, 2, 2])
TINY_OPTS = ["MODEL.TWINS.EMBED_DIMS", TINY["embed_dims"], "MODEL.TWINS.NUM_HEADS",
             TINY["num_heads"], "MODEL.TWINS.DEPTHS", TINY["depths"], "MODEL.TWINS.MLP_RATIOS",
             TINY["mlp_ratios"], "MODEL.TWINS.WINDOW_SIZES", [3, 3, 3, 3],
             "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
             "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.AUX_HEAD.CONVS_DIM", 8,
             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5]
SVT_OPTS = ["MODEL.BACKBONE.NAME", "build_svt_backbone", "MODEL.TWINS.NORM_AFTER_STAGE", True]


def tiny_model(svt=False, opts=()):
    return build_model(get_d2seg_cfg(YAML, TINY_OPTS + (SVT_OPTS if svt else [])
                                     + list(opts))).eval()


def _mmseg():
    mmseg_peer = pytest.importorskip("mmseg_peer")
    pytest.importorskip("mmseg")
    mmseg_peer.stub_mmcv_ext()
    return mmseg_peer


# (h, w) with window 4: no pad; pad_b 0 / pad_r 3 and pad_b 2 / pad_r 0 (mmseg's bug: the padded
# tokens are NOT masked); both pads > 0 (masked); a map smaller than the window
@pytest.mark.parametrize("hw", [(8, 12), (8, 9), (6, 8), (6, 9), (3, 2)])
def test_lsa_matches_mmseg_for_every_padding_case(hw):
    mmseg_peer = _mmseg()
    from mmseg.models.backbones.twins import LocallyGroupedSelfAttention as RefLSA

    ref = RefLSA(16, num_heads=2, qkv_bias=True, window_size=4)
    mmseg_peer.randomize_(ref)
    ours = LocallyGroupedSelfAttention(16, 2, True, 0.0, 0.0, 4)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, hw[0] * hw[1], 16, dtype=torch.float64)
    ref.double().eval(), ours.double().eval()
    with torch.no_grad():
        expected, got = ref(x, hw), ours(x, hw)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_lsa_masks_padding_only_when_both_pads_are_nonzero():
    """Without mmseg: with one pad 0 (mmseg's bug) the output equals plain window attention on
    the zero-padded map, cropped (padded tokens attended to); with both pads > 0 it does not
    (they are masked out)."""
    torch.manual_seed(0)
    lsa = LocallyGroupedSelfAttention(8, 2, True, 0.0, 0.0, 4).eval()
    for (h, w), masked in (((8, 6), False), ((6, 8), False), ((6, 6), True)):
        x = torch.randn(1, h, w, 8)
        padded = torch.nn.functional.pad(x, (0, 0, 0, -w % 4, 0, -h % 4))
        with torch.no_grad():
            got = lsa(x.reshape(1, h * w, 8), (h, w))
            unmasked = lsa(padded.reshape(1, -1, 8), padded.shape[1:3])
        unmasked = unmasked.reshape(padded.shape)[:, :h, :w].reshape(got.shape)
        assert torch.allclose(got, unmasked, atol=1e-6) != masked, (h, w)


@pytest.mark.parametrize("svt", [False, True])
def test_outputs_at_odd_sizes(svt):
    model = tiny_model(svt)
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        feats = model.backbone(x)
        logits = model.encode_decode(x)
    # corner padding in every patch embedding: ceil at each stride
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "twins1": (1, 8, 12, 18), "twins2": (1, 16, 6, 9), "twins3": (1, 24, 3, 5),
        "twins4": (1, 32, 2, 3)}
    assert {k: (s.channels, s.stride) for k, s in model.backbone.output_shape().items()} == {
        "twins1": (8, 4), "twins2": (16, 8), "twins3": (24, 16), "twins4": (32, 32)}
    assert logits.shape == (1, 5, 45, 70) and torch.isfinite(logits).all()
    kinds = [type(b.attn).__name__ for stage in model.backbone.layers for b in stage]
    assert kinds == (["LocallyGroupedSelfAttention", "GlobalSubsampledAttention", "Locally"
                      "GroupedSelfAttention", "LocallyGroupedSelfAttention",
                      "GlobalSubsampledAttention", "LocallyGroupedSelfAttention"] if svt
                     else ["GlobalSubsampledAttention"] * 6)


def test_output_selection_runs_only_the_stages_needed():
    cfg = get_d2seg_cfg(YAML, TINY_OPTS + ["MODEL.TWINS.OUT_FEATURES", ["twins2"]])
    backbone = build_backbone(cfg).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 33, 40))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"twins2": (1, 16, 5, 5)}
    assert backbone._num_run == 2


def official_twins_state_dict(svt, seed=0, classes=10):
    """Random weights named and shaped as the official Twins ImageNet models (``pcpvt_small.pth``
    / ``alt_gvt_small.pth``): ``patch_embeds.{i}.proj``, ``blocks.{i}.{j}`` with GSA ``attn.q``,
    ``attn.kv``, ``attn.proj``, ``attn.sr``/``attn.norm`` or LSA ``attn.qkv``/``attn.proj``,
    ``mlp.fc1/fc2``, ``pos_block.{i}.proj.0``, the final ``norm`` and the ``head``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def add(name, *shape):
        sd[name] = torch.randn(*shape, generator=g) / (shape[1] if len(shape) > 1 else 10) ** 0.5

    prev = 3
    for i, (c, depth, sr) in enumerate(zip(TINY["embed_dims"], TINY["depths"], [8, 4, 2, 1])):
        k = 4 if i == 0 else 2
        add(f"patch_embeds.{i}.proj.weight", c, prev, k, k)
        for p in ("proj.bias", "norm.weight", "norm.bias"):
            add(f"patch_embeds.{i}.{p}", c)
        for j in range(depth):
            b = f"blocks.{i}.{j}."
            for p in ("norm1", "norm2"):
                add(b + p + ".weight", c)
                add(b + p + ".bias", c)
            if svt and j % 2 == 0:
                add(b + "attn.qkv.weight", 3 * c, c)
                add(b + "attn.qkv.bias", 3 * c)
            else:
                add(b + "attn.q.weight", c, c)
                add(b + "attn.q.bias", c)
                add(b + "attn.kv.weight", 2 * c, c)
                add(b + "attn.kv.bias", 2 * c)
                if sr > 1:
                    add(b + "attn.sr.weight", c, c, sr, sr)
                    for p in ("sr.bias", "norm.weight", "norm.bias"):
                        add(b + "attn." + p, c)
            add(b + "attn.proj.weight", c, c)
            add(b + "attn.proj.bias", c)
            add(b + "mlp.fc1.weight", 2 * c, c)
            add(b + "mlp.fc1.bias", 2 * c)
            add(b + "mlp.fc2.weight", c, 2 * c)
            add(b + "mlp.fc2.bias", c)
        add(f"pos_block.{i}.proj.0.weight", c, 1, 3, 3)
        add(f"pos_block.{i}.proj.0.bias", c)
        prev = c
    add("norm.weight", prev)
    add("norm.bias", prev)
    add("head.weight", classes, prev)
    add("head.bias", classes)
    return sd


UNUSED = ["head.bias", "head.weight", "norm.bias", "norm.weight"]


@pytest.mark.parametrize("svt", [False, True])
def test_official_twins_conversion_equals_mmseg_twins2mmseg(svt):
    """d2seg's conversion against mmseg's own tools/model_converters/twins2mmseg.py (which keeps
    ``norm.*``: mmseg's non-strict loading ignores it), and the converted backbone's features
    against mmseg's PCPVT/SVT with its conversion."""
    mmseg_peer = _mmseg()
    twins2mmseg = mmseg_peer.mmseg_tool("model_converters/twins2mmseg.py")
    from argparse import Namespace

    from mmseg.models.backbones import PCPVT as RefPCPVT, SVT as RefSVT

    sd = official_twins_state_dict(svt, seed=1)
    theirs = twins2mmseg.convert_twins(Namespace(model="svt" if svt else "pcpvt"), sd)
    assert detect_backbone_format(sd) == "twins_official"
    ours, skipped, name = convert_backbone_state_dict(sd)
    assert skipped == UNUSED and name == "Twins PCPVT/SVT (official)"
    assert set(ours) == {"backbone." + k for k in theirs if not k.startswith("norm.")}
    assert all(torch.equal(ours["backbone." + k], v) for k, v in theirs.items()
               if not k.startswith("norm."))

    args = dict(TINY, qkv_bias=True, sr_ratios=[8, 4, 2, 1])
    ref = (RefSVT(**args, windiow_sizes=[3] * 4, norm_after_stage=True) if svt
           else RefPCPVT(**args))
    missing, unexpected = ref.load_state_dict(theirs, strict=False)
    assert unexpected == ["norm.weight", "norm.bias"]
    assert all(k.startswith("norm_list.") for k in missing)  # SVT's: not in ImageNet weights
    ref.eval()
    model = tiny_model(svt)
    model.load_state_dict(ours, strict=False)
    model.backbone.load_state_dict({k: v for k, v in ref.state_dict().items()
                                    if k.startswith("norm_list")}, strict=False)
    x = torch.randn(1, 3, 45, 70)
    with torch.no_grad():
        expected, got = ref(x), model.backbone(x)
    for i, e in enumerate(expected):
        torch.testing.assert_close(got[f"twins{i + 1}"], e, rtol=1e-4, atol=1e-4 * e.abs().max())


@pytest.mark.parametrize("svt", [False, True])
def test_official_twins_weights_load_through_model_weights(tmp_path, svt):
    sd = official_twins_state_dict(svt)
    torch.save(sd, tmp_path / "twins.pth")
    model = tiny_model(svt)
    heads = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    ckpt, log = load_logged(model, tmp_path / "twins.pth")
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    assert sorted(report.skipped) == UNUSED
    assert "Twins PCPVT/SVT (official)" in log
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in heads.items())
    backbone = {k for k in state if k.startswith("backbone.")}
    norms = {k for k in backbone if k.startswith("backbone.norm_list.")}
    assert len(norms) == (8 if svt else 0) and set(report.kept_init) >= norms
    assert set(report.loaded) == backbone - norms
    b = "backbone.layers.0.1."
    assert torch.equal(state[b + "attn.attn.in_proj_weight"],
                       torch.cat([sd["blocks.0.1.attn.q.weight"], sd["blocks.0.1.attn.kv.weight"]]))
    assert torch.equal(state[b + "attn.attn.out_proj.bias"], sd["blocks.0.1.attn.proj.bias"])
    assert torch.equal(state["backbone.position_encodings.2.proj.weight"],
                       sd["pos_block.2.proj.0.weight"])


def test_mmseg_converted_twins_pretrain_loads(tmp_path):
    """mmseg's published Twins weights (twins2mmseg's output, ``norm.*`` kept): loaded as they
    are, ``norm.*`` skipped."""
    source = tiny_model(svt=True)
    sd = {k[len("backbone."):]: v.clone() for k, v in source.state_dict().items()
          if k.startswith("backbone.") and not k.startswith("backbone.norm_list.")}
    sd["norm.weight"], sd["norm.bias"] = torch.ones(32), torch.zeros(32)
    assert detect_backbone_format(sd) == "twins"
    torch.save({"state_dict": sd}, tmp_path / "alt_gvt_mmseg.pth")
    model = tiny_model(svt=True, opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7])
    ckpt, log = load_logged(model, tmp_path / "alt_gvt_mmseg.pth")
    assert ckpt.last_report.backbone_only and not ckpt.last_report.errors
    assert sorted(ckpt.last_report.skipped) == ["norm.bias", "norm.weight"]
    assert "Twins PCPVT/SVT (mmseg)" in log
    state = model.state_dict()
    assert all(torch.equal(v, state["backbone." + k]) for k, v in sd.items()
               if not k.startswith("norm."))


@pytest.mark.parametrize("svt", [False, True])
def test_from_scratch_init_equals_mmseg(svt):
    """mmseg's PCPVT.init_weights without a checkpoint: trunc-normal(.02) Linears with zero
    biases, LayerNorms 1/0, every conv normal(0, sqrt(2 / fan_out)) with zero bias; the GSA's
    packed in_proj keeps nn.MultiheadAttention's xavier init with zero bias."""
    _mmseg()
    from mmseg.models.backbones import PCPVT as RefPCPVT, SVT as RefSVT

    args = dict(embed_dims=[32, 64, 128, 256], num_heads=[1, 2, 4, 8], depths=[2, 2, 2, 2],
                mlp_ratios=[4, 4, 4, 4], qkv_bias=True, sr_ratios=[8, 4, 2, 1])
    torch.manual_seed(0)
    ref = RefSVT(**args, windiow_sizes=[7] * 4, norm_after_stage=True) if svt else RefPCPVT(**args)
    ref.init_weights()
    opts = ["MODEL.TWINS.EMBED_DIMS", args["embed_dims"], "MODEL.TWINS.NUM_HEADS",
            args["num_heads"], "MODEL.TWINS.DEPTHS", [2, 2, 2, 2], "MODEL.TWINS.MLP_RATIOS",
            [4, 4, 4, 4], "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN"]
    ours = build_model(get_d2seg_cfg(YAML, opts + (SVT_OPTS if svt else []))).backbone
    ours, theirs = ours.state_dict(), ref.state_dict()
    assert set(ours) == set(theirs)
    checked = 0
    for k, v in theirs.items():
        if v.dim() == 1:
            assert torch.equal(ours[k], v), k  # constants: biases, norms
        elif v.numel() >= 4096:  # same distribution (spread within 15 %)
            for t in (v, ours[k]):
                assert abs(t.std().item() / v.std().item() - 1) < 0.15, k
                assert abs(t.mean().item()) < 0.1 * v.std().item(), k
            if re.search(r"(qkv|proj|fc\d|layers\.\d(\.0)?)\.weight$", k) and "position" not in k \
                    and "projection" not in k:
                assert abs(ours[k].std().item() - 0.02) < 0.003, k
            checked += 1
    assert checked > 10


@pytest.mark.parametrize("opts, message", [
    (["MODEL.TWINS.NUM_HEADS", [1, 2, 2]], "one value per stage"),
    (["MODEL.TWINS.WINDOW_SIZES", [3, 3]], "WINDOW_SIZES"),
    (["MODEL.TWINS.NUM_HEADS", [1, 3, 3, 4]], "multiple of its NUM_HEADS"),
    (["MODEL.TWINS.DEPTHS", [2, 0, 2, 1]], "DEPTHS must be >= 1"),
    (["MODEL.TWINS.WINDOW_SIZES", [3, 0, 3, 3]], "WINDOW_SIZES must be >= 1"),
    (["MODEL.TWINS.SR_RATIOS", [8, 4, 0, 1]], "SR_RATIOS must be >= 1"),
    (["MODEL.TWINS.OUT_FEATURES", ["res5"]], "not among"),
    (["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res5"]], "not produced by the backbone"),
])
def test_bad_config_values_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(svt=True, opts=opts)


def test_onnx_dynamic_export_matches_pytorch(tmp_path):
    """SVT (LSA with its padding mask, GSA, PEG) exported once; then other batch sizes and
    sizes whose LSA pads are both zero, one zero (unmasked) and both non-zero."""
    pytest.importorskip("onnxruntime")
    from export_models import randomize_

    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    model = randomize_(tiny_model(svt=True))
    module = SegmentationExportModule(plain_for_export(model)).eval()
    path = str(tmp_path / "model.onnx")
    export(module, "onnx", path, torch.rand(1, 3, 64, 96) * 255, dynamic=True)
    ok, figures = verify_export(module, "onnx", path, [(1, 64, 96), (2, 97, 131), (1, 45, 50),
                                                       (1, 48, 37)])
    assert ok, figures
