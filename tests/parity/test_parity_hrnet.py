"""FCN HRNetV2-W18 (and W18-Small): d2seg vs MMSegmentation 0.30 with the same (randomised)
weights."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

BN = ["MODEL.HRNET.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]


@torch.no_grad()
def calibrate_bn_(model, *imgs):
    """Sets every BN's running statistics to the mean of those of ``imgs``: with randomised
    statistics HRNet's fused sums grow ~3x per HR module (logits ~1e3); calibrated, the
    reference logits are of order 1, so the 1e-4 tolerance means something."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration forwards
    model.train()
    for img in imgs:
        model.encode_decode(img, [{}])
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def _pair(mmseg_name, yaml_name, *calib_imgs):
    ref = mmseg_peer.build_mmseg_model(mmseg_peer.mmseg_config(mmseg_name))
    calibrate_bn_(ref, *calib_imgs)
    model = build_model(get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml_name}.yaml", BN)).eval()
    sd = convert_mmseg_state_dict(ref.state_dict(), is_resnet=False)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ref, model


def test_fcn_hr18_matches_mmseg():
    img = torch.randn(1, 3, 64, 96)
    # odd branch sizes (13x18, 7x9, 4x5, 2x3): mmseg upsamples by 2**k, then resizes
    odd = torch.randn(1, 3, 50, 70)
    ref, model = _pair("hrnet/fcn_hr18_512x1024_40k_cityscapes", "fcn_hr18", img, odd)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
        ref_feats = ref.backbone(odd)
        feats = model.backbone(odd)
    assert 0.1 < expected.abs().max() < 100
    assert (got - expected).abs().max() < 1e-4
    for i, r in enumerate(ref_feats):
        assert feats[f"hr{i + 1}"].shape == r.shape
        assert (feats[f"hr{i + 1}"] - r).abs().max() < 1e-4


def test_fcn_hr18s_matches_mmseg():
    img = torch.randn(1, 3, 64, 96)
    ref, model = _pair("hrnet/fcn_hr18s_512x1024_40k_cityscapes", "fcn_hr18s", img)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
    assert 0.1 < expected.abs().max() < 100
    assert (got - expected).abs().max() < 1e-4
