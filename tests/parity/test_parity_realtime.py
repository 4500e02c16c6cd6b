"""Fast-SCNN, MobileNetV3 + LR-ASPP (large and small), BiSeNetV2, ERFNet and CGNet: d2seg vs
MMSegmentation 0.30 with the same (randomised) weights, loaded from an mmseg-format checkpoint file through
SegCheckpointer. Logits at odd sizes in eval mode, and the training losses of every head
(Fast-SCNN's three sigmoid-BCE losses, BiSeNetV2's five cross-entropy losses, ERFNet's one,
CGNet's class-weighted one)."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import SegCheckpointer

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

HEADS_BN = ["MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
            "MODEL.AUX_HEAD_2.NORM", "BN"]
FAST_SCNN = ("fastscnn/fast_scnn_lr0.12_8x4_160k_cityscapes", "fast_scnn",
             ["MODEL.FAST_SCNN.NORM", "BN"])
BISENETV2 = ("bisenetv2/bisenetv2_fcn_4x4_1024x1024_160k_cityscapes", "bisenetv2",
             ["MODEL.AUX_HEAD_3.NORM", "BN", "MODEL.AUX_HEAD_4.NORM", "BN"])
ERFNET = ("erfnet/erfnet_fcn_4x4_512x1024_160k_cityscapes", "erfnet_fcn", [])
CGNET = ("cgnet/cgnet_512x1024_60k_cityscapes", "cgnet", ["MODEL.CGNET.NORM", "BN"])
LRASPP = ("mobilenet_v3/lraspp_m-v3-d8_512x1024_320k_cityscapes", "lraspp_m-v3-d8",
          ["MODEL.MOBILENET_V3.NORM", "BN"])
LRASPP_SMALL = ("mobilenet_v3/lraspp_m-v3s-d8_512x1024_320k_cityscapes", "lraspp_m-v3-d8",
                ["MODEL.MOBILENET_V3.NORM", "BN", "MODEL.MOBILENET_V3.ARCH", "small",
                 "MODEL.MOBILENET_V3.OUT_FEATURES", ["layer0", "layer1", "layer12"],
                 "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["layer0", "layer1", "layer12"]])
FCN_MV2 = ("mobilenet_v2/fcn_m-v2-d8_512x1024_80k_cityscapes", "fcn_m-v2-d8",
           ["MODEL.MOBILENET_V2.NORM", "BN"])


def _pair(spec, tmp_path):
    """mmseg's model (random weights and BN statistics) and d2seg's, loaded from the mmseg
    checkpoint file by SegCheckpointer (format detection + key conversion, strict)."""
    mmseg_name, yaml, extra = spec
    ref = mmseg_peer.build_mmseg_model(mmseg_peer.mmseg_config(mmseg_name))
    path = str(tmp_path / "mmseg.pth")
    torch.save({"meta": {}, "state_dict": ref.state_dict()}, path)
    cfg = get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml", HEADS_BN + extra)
    model = build_model(cfg)
    SegCheckpointer(model).load(path)
    return ref, model.eval()


def _assert_close(got, expected):
    scale = max(1.0, expected.abs().max().item())
    assert got.shape == expected.shape
    assert 0.1 < expected.abs().max() < 1e3  # the comparison is not of zeros
    assert (got - expected).abs().max().item() <= 1e-4 * scale


@torch.no_grad()
def _assert_model_matches(ref, model, feature_names, size=(130, 194)):
    """Logits, every backbone output (in mmseg's out_indices order) and every auxiliary head's
    logits; the default size is odd at every stride (65x97 ... 5x7)."""
    img = torch.randn(1, 3, *size)
    _assert_close(model.encode_decode(img), ref.encode_decode(img, [{}]))
    ref_feats = ref.extract_feat(img)
    feats = model.backbone(img)
    assert len(ref_feats) == len(feature_names)
    for name, r in zip(feature_names, ref_feats):
        _assert_close(feats[name], r)
    ref_aux = ref.auxiliary_head if ref.with_auxiliary_head else []  # (ERFNet: none)
    if isinstance(ref_aux, torch.nn.Module) and not isinstance(ref_aux, torch.nn.ModuleList):
        ref_aux = [ref_aux]  # mmseg keeps a single auxiliary head bare (FCN on MobileNetV2)
    assert len(model.auxiliary_heads) == len(ref_aux)
    for head, ref_head in zip(model.auxiliary_heads, ref_aux):
        _assert_close(head(feats)[0], ref_head(ref_feats))


def test_fast_scnn_matches_mmseg(tmp_path):
    ref, model = _pair(FAST_SCNN, tmp_path)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.01 for m in bns)  # mmseg's norm_cfg, heads included
    _assert_model_matches(ref, model, ("higher_res", "lower_res", "fusion"))


def test_bisenetv2_matches_mmseg(tmp_path):
    ref, model = _pair(BISENETV2, tmp_path)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    _assert_model_matches(ref, model, ("bga", "stage1", "stage2", "stage3", "stage4"))


def test_erfnet_matches_mmseg(tmp_path):
    ref, model = _pair(ERFNET, tmp_path)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)  # set inside mmseg's blocks
    # odd at strides 1, 2, 4 (65x97, 33x49, 17x25): every downsampler resizes its max-pool
    # (floor size) to its conv's (ceil size)
    _assert_model_matches(ref, model, ("decoder",), size=(65, 97))


def test_cgnet_matches_mmseg(tmp_path):
    ref, model = _pair(CGNET, tmp_path)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)  # mmseg's norm_cfg
    _assert_model_matches(ref, model, ("stage0", "stage1", "stage2"), size=(131, 197))


def test_fcn_mobilenet_v2_matches_mmseg(tmp_path):
    ref, model = _pair(FCN_MV2, tmp_path)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    # mmseg's out_indices (1, 2, 4, 6); odd at strides 2, 4, 8 (33x49, 17x25, 9x13)
    _assert_model_matches(ref, model, ("layer2", "layer3", "layer5", "layer7"), size=(65, 97))


@pytest.mark.parametrize("spec,size", [(LRASPP, (401, 419)), (LRASPP_SMALL, (393, 455))],
                         ids=["large", "small"])
def test_lraspp_matches_mmseg(spec, size, tmp_path):
    ref, model = _pair(spec, tmp_path)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)  # mmseg's norm_cfg, head included
    img = torch.randn(1, 3, *size)  # >= 392: the head's 49x49 pool at stride 8
    with torch.no_grad():
        _assert_close(model.encode_decode(img), ref.encode_decode(img, [{}]))


@pytest.mark.parametrize("spec,num_aux", [(FAST_SCNN, 2), (BISENETV2, 4), (ERFNET, 0),
                                          (CGNET, 0), (FCN_MV2, 1)],
                         ids=["fast_scnn", "bisenetv2", "erfnet", "cgnet", "fcn_m-v2"])
def test_training_losses_match_mmseg(spec, num_aux, tmp_path):
    """BN in training mode, dropout off (the heads' and ERFNet's blocks'): the decode and every
    auxiliary loss (Fast-SCNN's sigmoid BCE, BiSeNetV2's and ERFNet's cross-entropy)."""
    ref, model = _pair(spec, tmp_path)
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 66, 98, generator=g)
    label = torch.randint(0, 19, (2, 66, 98), generator=g)
    label[torch.rand(2, 66, 98, generator=g) < 0.2] = 255
    ref.train()
    model.train()
    for m in list(ref.modules()) + list(model.modules()):
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d)):
            m.eval()
    expected = ref.forward_train(img, [{}] * 2, label[:, None])
    got = model.compute_losses(model.backbone(img), label)
    aux0 = "aux.loss_ce" if num_aux == 1 else "aux_0.loss_ce"  # (mmseg: a bare single head)
    pairs = [("loss_sem_seg", "decode.loss_ce")] + [("loss_aux", aux0)] * (num_aux > 0)
    pairs += [(f"loss_aux_{i + 1}", f"aux_{i}.loss_ce") for i in range(1, num_aux)]
    assert set(got) == {k for k, _ in pairs}
    for ours, theirs in pairs:
        assert abs(got[ours].item() - expected[theirs].item()) <= 1e-5 * expected[theirs].item()
