"""CCNet R-50-D8: d2seg vs MMSegmentation 0.30 with the same (randomised) weights."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict

mmseg_reference = pytest.importorskip("mmseg_reference")
pytest.importorskip("mmseg")


def test_ccnet_r50_d8_matches_mmseg():
    ref = mmseg_reference.build_mmseg_model(
        mmseg_reference.mmseg_config("ccnet/ccnet_r50-d8_512x1024_40k_cityscapes"))
    with torch.no_grad():  # Scale(0) gamma at O(1), so the criss-cross branch weighs fully
        ref.decode_head.cca.gamma.scale.fill_(1.0)
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/ccnet_r50-d8.yaml",
                        ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
                         "MODEL.AUX_HEAD.NORM", "BN"])
    model = build_model(cfg).eval()
    sd = convert_mmseg_state_dict(ref.state_dict())
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max() < 1e-4
