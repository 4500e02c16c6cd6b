"""PSANet R-50-D8: d2seg vs MMSegmentation 0.30 with the same (randomised) weights.

mmseg's PSAHead calls mmcv's compiled PSAMask, absent here: it is replaced by the naive
per-pixel loop of mmcv's CPU kernel (tests/psamask_reference.py)."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from psamask_reference import NaivePSAMask

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")


def test_psanet_r50_d8_matches_mmseg(monkeypatch):
    cfg_ref = mmseg_peer.mmseg_config("psanet/psanet_r50-d8_512x1024_40k_cityscapes")
    from mmseg.models.decode_heads import psa_head

    monkeypatch.setattr(psa_head, "PSAMask", NaivePSAMask)
    ref = mmseg_peer.build_mmseg_model(cfg_ref)
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/psanet_r50-d8.yaml",
                        ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
                         "MODEL.AUX_HEAD.NORM", "BN"])
    model = build_model(cfg).eval()
    sd = convert_mmseg_state_dict(ref.state_dict())
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    # 1/8 maps 8x12 (even: shrink with align_corners=False) and 9x13 (odd: align_corners=True)
    for size in [(64, 96), (72, 104)]:
        img = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = ref.encode_decode(img, [{}])
            got = model.encode_decode(img)
        assert expected.abs().max() > 0.1
        assert (got - expected).abs().max() < 1e-4, size
