"""The ConvNeXt backbone (mmcls 0.25's) outside the logits parity (tests/parity/
test_parity_convnext.py): outputs and strides at odd sizes (no padding: sizes floor), the
from-scratch init against mmcls's, mmcls's ImageNet weights through MODEL.WEIGHTS (norm0..2 keep
their init), frozen stages, activation checkpointing, bad config values, and ONNX export with
dynamic H x W."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint.backbones import detect_backbone_format
from test_checkpoint_formats import load_logged, one_thread  # noqa: F401  (autouse fixture)

YAML = REPO_CONFIGS / "_base_/models/upernet_convnext.yaml"
DEPTHS, CHANNELS = [1, 2, 3, 1], [8, 16, 24, 32]
TINY_OPTS = ["MODEL.CONVNEXT.DEPTHS", DEPTHS, "MODEL.CONVNEXT.CHANNELS", CHANNELS,
             "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
             "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.AUX_HEAD.CONVS_DIM", 8,
             "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5, "SOLVER.AMP.ENABLED", False]


def tiny_model(opts=()):
    return build_model(get_d2seg_cfg(YAML, TINY_OPTS + list(opts))).eval()


def _mmcls_convnext(**kwargs):
    pytest.importorskip("mmseg")
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    pytest.importorskip("mmcls")
    from mmcls.models.backbones import ConvNeXt

    return ConvNeXt(arch=dict(depths=DEPTHS, channels=CHANNELS), **kwargs)


def test_outputs_and_strides_at_odd_sizes():
    """No padding: 4x4/4 stem and 2x2/2 downsamples floor odd sizes (375 x 500 -> 93 x 125)."""
    model = tiny_model()
    shapes = model.backbone.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "convnext1": (8, 4), "convnext2": (16, 8), "convnext3": (24, 16), "convnext4": (32, 32)}
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 375, 500))
        logits = model.encode_decode(torch.randn(1, 3, 75, 101))
    assert {k: tuple(v.shape[2:]) for k, v in feats.items()} == {
        "convnext1": (93, 125), "convnext2": (46, 62), "convnext3": (23, 31),
        "convnext4": (11, 15)}
    assert logits.shape == (1, 5, 75, 101)


def test_output_selection_builds_only_their_norms():
    model = tiny_model(["MODEL.CONVNEXT.OUT_FEATURES", ["convnext1", "convnext3"],
                        "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["convnext1", "convnext3"]])
    assert {n for n, _ in model.backbone.named_children() if n.startswith("norm")} == {"norm0",
                                                                                     "norm2"}
    # every stage exists (checkpoint keys), stage 3 does not run: 16 px suffice
    assert len(model.backbone.stages) == 4
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 17, 23))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {"convnext1": (1, 8, 4, 5),
                                                             "convnext3": (1, 24, 1, 1)}


def test_too_small_input_is_named():
    with pytest.raises(ValueError, match=r"ConvNeXt input \(31, 64\) is smaller than 32 px"):
        tiny_model().backbone(torch.randn(1, 3, 31, 64))


def test_from_scratch_init_equals_mmcls():
    """mmcls's ConvNeXt has no init_weights of its own (mmseg's Pretrained init aside): PyTorch's
    default init, LayerNorms 1/0, gamma = layer_scale_init_value. d2seg builds its modules in
    mmcls's order, so with the same seed every tensor is equal."""
    torch.manual_seed(0)
    ref = _mmcls_convnext(out_indices=[0, 1, 2, 3], layer_scale_init_value=1.0,
                          drop_path_rate=0.4, gap_before_final_norm=False)
    ref.init_weights()
    torch.manual_seed(0)
    ours = tiny_model().backbone
    theirs = ref.state_dict()
    assert set(ours.state_dict()) == set(theirs)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, theirs[k]), k
    assert torch.equal(ours.stages[0][0].gamma, torch.ones(8))
    # stochastic depth and LayerNorm eps as mmcls's (downsample LNs: 1e-5, the others 1e-6)
    assert [b.drop_path.drop_prob for s in ours.stages for b in s] == pytest.approx(
        [0.0, 0.4 / 6, 0.8 / 6, 1.2 / 6, 1.6 / 6, 2.0 / 6, 0.4])
    assert [m[0].eps for m in ours.downsample_layers[1:]] == [1e-5] * 3 == [
        r[0].eps for r in ref.downsample_layers[1:]]
    assert ours.downsample_layers[0][1].eps == ours.norm0.eps == ours.stages[2][0].norm.eps == 1e-6


def test_mmcls_imagenet_weights_load(tmp_path):
    """An mmcls ImageNet ConvNeXt (``backbone.*`` with only norm3, ``head.fc.*``) through
    MODEL.WEIGHTS: the classifier skipped, norm0..2 keep their init (mmseg's non-strict load)."""
    ref = _mmcls_convnext(out_indices=-1, layer_scale_init_value=1.0)  # the classifier's
    import mmseg_peer

    mmseg_peer.randomize_(ref, seed=3)
    sd = {"backbone." + k: v for k, v in ref.state_dict().items()}
    sd["head.fc.weight"], sd["head.fc.bias"] = torch.randn(10, 32), torch.randn(10)
    assert detect_backbone_format(sd) == "mmcls:convnext"
    torch.save({"meta": {"mmcls_version": "0.25.0"}, "state_dict": sd}, tmp_path / "cnx.pth")
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt, log = load_logged(model, tmp_path / "cnx.pth")
    report = ckpt.last_report
    assert report.backbone_only and not report.errors, report.error_message()
    assert sorted(report.skipped) == ["head.fc.bias", "head.fc.weight"]
    assert "ConvNeXt (mmcls)" in log
    state = model.state_dict()
    new_norms = {f"backbone.norm{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    backbone = {k for k in state if k.startswith("backbone.")}
    assert set(report.loaded) == backbone - new_norms
    assert set(report.kept_init) >= new_norms
    for k in backbone - new_norms:
        assert torch.equal(state[k], sd[k]), k
    for k in new_norms | {k for k in state if not k.startswith("backbone.")}:
        assert torch.equal(state[k], before[k]), k


def test_frozen_stages_stay_frozen_and_in_eval_mode():
    backbone = tiny_model(["MODEL.CONVNEXT.FROZEN_STAGES", 2,
                           "MODEL.CONVNEXT.DROP_PATH_RATE", 0.5]).backbone.train()
    frozen = [backbone.downsample_layers[i] for i in range(2)] + [backbone.stages[i]
                                                                  for i in range(2)]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for f in frozen for m in f.modules())
    assert backbone.stages[2].training and backbone.downsample_layers[2][1].weight.requires_grad


def test_activation_checkpointing_keeps_the_gradients():
    from export_models import randomize_

    backbone = randomize_(tiny_model()).backbone.train()
    for block in (b for s in backbone.stages for b in s):
        block.drop_path.drop_prob = 0.0
    x = torch.randn(2, 3, 45, 70)
    grads = []
    for with_cp in (False, True):
        backbone.zero_grad()
        for block in (b for s in backbone.stages for b in s):
            block.with_cp = with_cp
        sum(f.square().mean() for f in backbone(x).values()).backward()
        grads.append({k: p.grad.clone() for k, p in backbone.named_parameters()})
    for k, g in grads[0].items():
        torch.testing.assert_close(grads[1][k], g, rtol=1e-5, atol=1e-6 * g.abs().max())


@pytest.mark.parametrize("opts, message", [
    (["MODEL.CONVNEXT.CHANNELS", [8, 16, 24]], "one value per stage"),
    (["MODEL.CONVNEXT.DEPTHS", [1, 0, 1, 1]], r"MODEL.CONVNEXT.DEPTHS=\[1, 0, 1, 1\]"),
    (["MODEL.CONVNEXT.STEM_PATCH_SIZE", 0], "MODEL.CONVNEXT.STEM_PATCH_SIZE"),
    (["MODEL.CONVNEXT.DROP_PATH_RATE", 1.0], "MODEL.CONVNEXT.DROP_PATH_RATE=1.0"),
    (["MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE", -1.0], "LAYER_SCALE_INIT_VALUE=-1.0"),
    (["MODEL.CONVNEXT.FROZEN_STAGES", 5], "FROZEN_STAGES=5"),
    (["MODEL.CONVNEXT.OUT_FEATURES", ["res5"]], "not among"),
    (["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res2", "res5"]], "not produced by the backbone"),
])
def test_bad_config_values_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(opts)


def test_without_layer_scale_and_with_conv_pointwise():
    backbone = tiny_model(["MODEL.CONVNEXT.LAYER_SCALE_INIT_VALUE", 0.0,
                           "MODEL.CONVNEXT.LINEAR_PW_CONV", False]).backbone
    block = backbone.stages[0][0]
    assert block.gamma is None and isinstance(block.pointwise_conv1, torch.nn.Conv2d)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 33, 65))["convnext4"].shape == (1, 32, 1, 2)


def test_onnx_dynamic_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from export_models import randomize_
    from d2seg.export.exporters import export, verify_export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    model = randomize_(tiny_model())
    module = SegmentationExportModule(plain_for_export(model)).eval()
    path = str(tmp_path / "model.onnx")
    export(module, "onnx", path, torch.rand(1, 3, 64, 96) * 255, dynamic=True)
    # other batch and sizes that are not multiples of 32 (every stage floors)
    ok, figures = verify_export(module, "onnx", path, [(1, 64, 96), (2, 97, 131), (1, 45, 50)])
    assert ok, figures
