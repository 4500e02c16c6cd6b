"""The backbone and loss variants the full zoo needs, against MMSegmentation 0.30:

- whole models built from the generated yamls and from mmseg's configs of the same name, with the
  same (randomised) weights: ResNet-18 (BasicBlock, V1c deep stem), ResNet-V1b (7x7 stem,
  ``r18b``/``r50b``), output stride 16 with a dilated FCN head (``fcn_d6``), 32 with dilated
  res4/res5 (``pspnet_r50-d32``) and multi-grid res5 (``d16-mg124``, mmseg's ``multi_grid``
  replaces res5's dilations);
- the OHEM pixel sampler (``OHEMPixelSampler``) on a decode head's loss, in both of its modes.
"""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg, tiny_cfg
from d2seg.checkpoint import convert_mmseg_state_dict

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

BN = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN"]
# mmseg config stem -> ResNet depth both sides use (None: the config's own; R-101 -> 50 for speed,
# the variant under test sits in the stem/strides/dilations, not in the depth)
VARIANTS = {
    "fcn/fcn_r18-d8_512x1024_80k_cityscapes": None,
    "fcn/fcn_r18b-d8_512x1024_80k_cityscapes": None,
    "fcn/fcn_d6_r50b-d16_512x1024_80k_cityscapes": None,
    "pspnet/pspnet_r50-d32_512x1024_80k_cityscapes": None,
    "deeplabv3/deeplabv3_r101-d16-mg124_512x1024_40k_cityscapes": 50,
}


@pytest.mark.parametrize("stem", sorted(VARIANTS))
def test_variant_matches_mmseg(stem):
    depth = VARIANTS[stem]
    mcfg = mmseg_peer.mmseg_config(stem)
    opts = list(BN)
    if depth:
        mcfg.model.backbone.depth = depth
        opts += ["MODEL.RESNETS.DEPTH", depth]
    ref = mmseg_peer.build_mmseg_model(mcfg)
    img = mmseg_peer.calibration_images(2)
    mmseg_peer.calibrate_bn_(ref, img)  # keeps deep models' logits O(1)
    model = build_model(get_d2seg_cfg(REPO_CONFIGS / f"{stem}.yaml", opts)).eval()
    missing, unexpected = model.load_state_dict(convert_mmseg_state_dict(ref.state_dict()),
                                                strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    if "mg124" in stem:  # mmseg: multi_grid (1, 2, 4) replaces res5's dilation 2
        assert [b.conv2.dilation[0] for b in model.backbone.res5] == [1, 2, 4]
    x = img[:1]
    with torch.no_grad():
        expected = ref.encode_decode(x, [{}])
        got = model.encode_decode(x)
    scale = expected.abs().max()
    assert scale > 0.1
    assert (got - expected).abs().max() < 1e-4 * max(1.0, scale), stem


def test_multi_grid_needs_a_dilation_per_block():
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/fcn_r50-d8.yaml",
                        ["MODEL.RESNETS.RES5_DILATION_PER_BLOCK", [1, 2]])
    with pytest.raises(ValueError, match=r"RES5_DILATION_PER_BLOCK=\[1, 2\].*3 for depth 50"):
        build_model(cfg)


def _mmseg_head_loss(logits, target, *, thresh, min_kept, class_weight):
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models.decode_heads import FCNHead

    head = FCNHead(in_channels=8, channels=8, num_classes=logits.shape[1],
                   sampler=dict(type="OHEMPixelSampler", thresh=thresh, min_kept=min_kept),
                   loss_decode=dict(type="CrossEntropyLoss", loss_weight=1.0,
                                    class_weight=class_weight))
    return head.losses(logits, target.unsqueeze(1))["loss_ce"]


@pytest.mark.parametrize("thresh", [None, 0.7])
@pytest.mark.parametrize("min_kept", [20, 10_000])  # fewer / more than the valid pixels
@pytest.mark.parametrize("weighted", [False, True])
def test_ohem_loss_matches_mmseg(thresh, min_kept, weighted):
    g = torch.Generator().manual_seed(min_kept + weighted)
    num_classes = 5
    logits = torch.randn(2, num_classes, 24, 24, generator=g) * 3
    target = torch.randint(0, num_classes, (2, 24, 24), generator=g)
    target[torch.rand(2, 24, 24, generator=g) < 0.2] = 255
    class_weight = [0.5, 1.0, 2.0, 1.0, 0.8] if weighted else None
    opts = ["MODEL.SEM_SEG_HEAD.OHEM_MIN_KEPT", min_kept]
    if thresh is not None:
        opts += ["MODEL.SEM_SEG_HEAD.OHEM_THRESH", thresh]
    if weighted:
        opts += ["MODEL.SEM_SEG_HEAD.CLASS_WEIGHT", class_weight]
    head = build_model(tiny_cfg(num_classes=num_classes, aux=False, opts=opts)).decode_head
    got = head.loss_on(logits, target)
    expected = _mmseg_head_loss(logits, target, thresh=thresh, min_kept=min_kept,
                                class_weight=class_weight)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    plain = build_model(tiny_cfg(num_classes=num_classes, aux=False)).decode_head
    if min_kept < 100:  # the sampler drops pixels: the loss must differ from the plain one
        assert not torch.allclose(got, plain.loss_on(logits, target))


def test_ohem_keeps_nothing_without_valid_pixels():
    from d2seg.modeling.losses import ohem_pixel_weight

    logits = torch.randn(1, 3, 4, 4)
    target = torch.full((1, 4, 4), 255)
    for thresh in (None, 0.7):
        w = ohem_pixel_weight(logits, target, min_kept=5, thresh=thresh)
        assert w.shape == target.shape and w.sum() == 0
