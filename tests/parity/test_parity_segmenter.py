"""Segmenter (VisionTransformer + SegmenterMaskTransformerHead): d2seg vs MMSegmentation 0.30 with
the same (randomised) weights, read from an mmseg checkpoint file by SegCheckpointer, at a narrow
width (embed 32, 3 backbone layers with the final norm, 2 heads; a 2-layer mask transformer of
32 dims; 7 classes; pos_embed grid 4x4 for img_size 64): logits at 65x97 (padded to 80x112, a
5x7 grid: pos_embed resized bicubically) in float32 and float64; one training step's loss and
every gradient (float64); the from-scratch init's statistics against mmseg's init_weights;
Segmenter's ImageNet weights (vitjax2mmseg's layout, pos_embed of another grid) through
MODEL.WEIGHTS; and the parameter names and shapes of mmseg's own Segmenter configs (mask and
linear heads)."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from d2seg.checkpoint.backbones import detect_backbone_format
from test_checkpoint_formats import load_logged, one_thread  # noqa: F401  (autouse fixture)
from test_segmenter_dpt import SEGMENTER

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

from test_parity_vit import assert_mmseg_shapes  # noqa: E402

YAML = REPO_CONFIGS / "_base_/models/segmenter_vit-b16_mask.yaml"
WIDTH, LAYERS, HEADS, IMG, CLASSES = 32, 3, 2, 64, 7
NARROW = SEGMENTER[1]  # the same widths, as overrides of YAML
SIZE = (65, 97)


def _mmseg_cfg(drop_path=0.1):
    cfg = mmseg_peer.mmseg_config("_base_/models/segmenter_vit-b16_mask")
    cfg.model.pretrained = None
    cfg.model.backbone.update(embed_dims=WIDTH, num_layers=LAYERS, num_heads=HEADS,
                              img_size=(IMG, IMG), drop_path_rate=drop_path)
    cfg.model.decode_head.update(in_channels=WIDTH, channels=WIDTH, num_heads=HEADS,
                                 embed_dims=WIDTH, num_classes=CLASSES,
                                 drop_path_rate=drop_path)
    return cfg


def _d2seg_opts(drop_path=0.1):
    return NARROW + ["MODEL.VIT.DROP_PATH_RATE", drop_path,
                     "MODEL.SEGMENTER_HEAD.DROP_PATH_RATE", drop_path]


def _pair(tmp_path, drop_path=0.1):
    """mmseg's model (random weights) and d2seg's, loaded from its mmseg 0.x checkpoint file by
    SegCheckpointer (detection, conversion, strict check)."""
    ref = mmseg_peer.build_mmseg_model(_mmseg_cfg(drop_path))
    model = build_model(get_d2seg_cfg(YAML, _d2seg_opts(drop_path)))
    return ref, mmseg_peer.load_via_checkpointer(ref, model, tmp_path / "segmenter.pth")


def logits_and_head_outputs(ref, model, dtype, size, n=1):
    """Both models in ``dtype`` on ``n`` test images of ``size``: mmseg's and d2seg's logits
    at the input size, then their decode heads' outputs (d2seg's features too)."""
    ref.to(dtype)
    model.to(dtype)
    img = mmseg_peer.calibration_images(n, size, seed=1).to(dtype)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}] * n)
        got = model.encode_decode(img)
        feats = model.extract_feat(img)
        head_expected = ref.decode_head(ref.extract_feat(img))
        head = model.decode(feats)
    assert 0.1 < expected.abs().max() < 100  # the comparison is not of zeros
    return expected, got, head_expected, head, feats


def assert_training_step_matches(ref, model, classes, size=(61, 83)):
    """mmseg's and d2seg's decode-head loss (plain cross-entropy, 10% ignored pixels) and every
    gradient on two images of ``size`` (not multiples of 16), in float64."""
    ref.double()
    model.double()
    g = torch.Generator().manual_seed(0)
    imgs = mmseg_peer.calibration_images(2, size, seed=2).double()
    labels = torch.randint(0, classes, (2, *size), generator=g)
    labels[torch.rand(2, *size, generator=g) < 0.1] = 255
    ref_losses, losses = mmseg_peer.training_losses(ref, model, imgs, labels)
    ref_losses["decode.loss_ce"].backward()
    assert set(losses) == {"loss_sem_seg"}
    losses["loss_sem_seg"].backward()
    expected = ref_losses["decode.loss_ce"].item()
    assert abs(losses["loss_sem_seg"].item() - expected) <= 1e-10 * expected
    ref_grads = convert_mmseg_state_dict({k: p.grad for k, p in ref.named_parameters()},
                                         is_resnet=False)
    grads = {k: p.grad for k, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    mmseg_peer.assert_same_gradients(ref_grads, grads, rel=1e-8)


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_segmenter_logits_match_mmseg(tmp_path, dtype, rel):
    expected, got, masks_expected, masks, _ = logits_and_head_outputs(*_pair(tmp_path), dtype,
                                                                      SIZE, n=2)
    assert expected.shape == (2, CLASSES, *SIZE) and masks.shape == (2, CLASSES, 5, 7)
    mmseg_peer.assert_close_to_scale(masks, masks_expected, rel, what="masks")
    mmseg_peer.assert_close_to_scale(got, expected, rel)


def test_segmenter_training_step_matches_mmseg(tmp_path):
    """The cross-entropy on the mask head's logits and every gradient, in float64 (stochastic
    depth off on both sides: its masks are random)."""
    assert_training_step_matches(*_pair(tmp_path, drop_path=0.0), CLASSES)


def test_mask_head_init_equals_mmseg():
    """From scratch, each head tensor has the statistics of mmseg's init_weights (trunc-normal
    0.02 Linears and cls_emb, zero biases - the FFNs' too -, LayerNorms 1/0, torch's
    xavier-uniform in_proj) at ViT-B's width."""
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models import build_head

    cfg = mmseg_peer.mmseg_config("_base_/models/segmenter_vit-b16_mask").model.decode_head
    torch.manual_seed(0)
    ref = build_head(cfg)
    ref.init_weights()
    model = build_model(get_d2seg_cfg(YAML, ["MODEL.VIT.NUM_LAYERS", 1, "MODEL.VIT.OUT_INDICES",
                                             [0], "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["vit0"]]))
    assert_same_head_init(model, ref)


def assert_same_head_init(model, ref):
    """d2seg's ``decode_head`` tensors against those of mmseg's head ``ref`` after its
    init_weights: the same names and shapes, equal constants, and each random tensor of the same
    distribution (mean and spread within sampling noise)."""
    theirs = ref.state_dict()
    ours = {k[len("decode_head."):]: v for k, v in model.state_dict().items()
            if k.startswith("decode_head.")}
    theirs = convert_mmseg_state_dict({"decode_head." + k: v for k, v in theirs.items()},
                                      is_resnet=False)
    theirs = {k[len("decode_head."):]: v for k, v in theirs.items()}
    assert set(ours) == set(theirs), sorted(set(ours) ^ set(theirs))
    for k, v in theirs.items():
        o = ours[k].double()
        v = v.double()
        assert o.shape == v.shape, k
        if v.numel() == 1 or v.std() == 0:
            assert torch.equal(o, v), k
        else:
            noise = v.numel() ** -0.5
            assert abs(o.std() - v.std()) <= (0.02 + 4 * noise) * v.std(), k
            assert abs(o.mean() - v.mean()) <= 6 * noise * v.std(), k


def _jax_vit(grid, seed=0, layers=LAYERS, width=WIDTH, heads=HEADS):
    """Random AugReg ViT weights named and shaped as the ``.npz`` files vitjax2mmseg.py reads
    (``grid`` x ``grid`` pos_embed + the class slot; kernels (in, out), per-head q/k/v)."""
    g = torch.Generator().manual_seed(seed)
    hd = width // heads

    def r(*shape):
        return torch.randn(*shape, generator=g) / (shape[0] if len(shape) > 1 else 10) ** .5

    sd = {"embedding/kernel": r(16, 16, 3, width), "embedding/bias": r(width),
          "Transformer/posembed_input/pos_embedding": r(1, grid * grid + 1, width),
          "cls": r(1, 1, width), "Transformer/encoder_norm/scale": 1 + r(width),
          "Transformer/encoder_norm/bias": r(width)}
    for i in range(layers):
        b = f"Transformer/encoderblock_{i}/"
        for n in ("LayerNorm_0", "LayerNorm_2"):
            sd[b + n + "/scale"], sd[b + n + "/bias"] = 1 + r(width), r(width)
        a = b + "MultiHeadDotProductAttention_1/"
        for n in ("query", "key", "value"):
            sd[a + n + "/kernel"], sd[a + n + "/bias"] = r(width, heads, hd), r(heads, hd)
        sd[a + "out/kernel"], sd[a + "out/bias"] = r(heads, hd, width), r(width)
        m = b + "MlpBlock_3/"
        sd[m + "Dense_0/kernel"], sd[m + "Dense_0/bias"] = r(width, 4 * width), r(4 * width)
        sd[m + "Dense_1/kernel"], sd[m + "Dense_1/bias"] = r(4 * width, width), r(width)
    return sd


def test_segmenter_imagenet_weights_load_as_mmseg_init_weights(tmp_path, caplog):
    """mmseg's pretrain/segmenter/vit_*_p16_384 files are vitjax2mmseg's output: a bare mmseg
    ViT state_dict whose pos_embed has the 384-pixel grid (24x24). Through MODEL.WEIGHTS such a
    file (3x3 here) loads into the backbone with pos_embed resized to the model's 4x4 grid and
    the final norm ``ln1`` kept, equal to mmseg's VisionTransformer initialised from it; the
    head keeps its initialisation."""
    convert = mmseg_peer.mmseg_tool("model_converters/vitjax2mmseg.py").vit_jax_to_torch
    sd = convert(_jax_vit(grid=3), num_layer=LAYERS)
    assert detect_backbone_format(sd) == "vit"
    path = str(tmp_path / "vit_tiny_p16_384.pth")
    torch.save(sd, path)
    model = build_model(get_d2seg_cfg(YAML, NARROW))
    heads = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    with caplog.at_level("INFO", logger="d2seg.modeling.backbone.vit"):
        ckpt, log = load_logged(model, path)
    report = ckpt.last_report
    assert report.backbone_only and not report.errors and not report.skipped, report
    assert "ViT / DeiT (mmseg's vit2mmseg)" in log
    assert "Resizing backbone.pos_embed from 3x3 to 4x4 (bicubic)" in caplog.text
    state = model.state_dict()
    assert set(report.loaded) == {k for k in state if k.startswith("backbone.")}
    assert all(torch.equal(v, state[k]) for k, v in heads.items())

    mmseg_peer.stub_mmcv_ext()
    from mmseg.models.backbones import VisionTransformer as RefViT

    ref = RefViT(img_size=IMG, embed_dims=WIDTH, num_layers=LAYERS, num_heads=HEADS,
                 final_norm=True, norm_cfg=dict(type="LN", eps=1e-6),
                 init_cfg=dict(type="Pretrained", checkpoint=path))
    ref.init_weights()
    ref.eval()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(state["backbone." + k], v, rtol=0, atol=1e-6)
    x = mmseg_peer.calibration_images(1, SIZE, seed=3)
    with torch.no_grad():
        mmseg_peer.assert_close_to_scale(model.eval().backbone(x)[f"vit{LAYERS - 1}"],
                                         ref(x)[0], 1e-4, what="features")


@pytest.mark.parametrize("mmseg_name, opts", [
    ("segmenter/segmenter_vit-t_mask_8x1_512x512_160k_ade20k",
     ["MODEL.VIT.EMBED_DIMS", 192, "MODEL.VIT.NUM_HEADS", 3, "MODEL.SEGMENTER_HEAD.EMBED_DIMS",
      192, "MODEL.SEGMENTER_HEAD.NUM_HEADS", 3, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 192]),
    # the linear variant: FCNHead(num_convs=0), a 1x1 classifier on the ViT's 1/16 map
    ("segmenter/segmenter_vit-s_linear_8x1_512x512_160k_ade20k",
     ["MODEL.VIT.EMBED_DIMS", 384, "MODEL.VIT.NUM_HEADS", 6, "MODEL.SEM_SEG_HEAD.NAME",
      "FCNHead", "MODEL.SEM_SEG_HEAD.NUM_CONVS", 0, "MODEL.SEM_SEG_HEAD.CONCAT_INPUT", False,
      "MODEL.SEM_SEG_HEAD.CONVS_DIM", 384]),
])
def test_segmenter_configs_build_mmseg_shapes(mmseg_name, opts, monkeypatch):
    assert_mmseg_shapes(YAML, mmseg_name, opts, monkeypatch)
