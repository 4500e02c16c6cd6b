"""ResNet-D8 (UPerNet: ResNet) models whose heads need nothing special: d2seg vs MMSegmentation
0.30 with the same (randomised) weights, logits at the input size (mmseg's ``encode_decode``).

DANet, PSANet, OCRNet and HRNet have files of their own (extra outputs or references)."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

# d2seg base model yaml -> mmseg config stem
MODELS = {
    "fcn_r50-d8": "fcn/fcn_r50-d8_512x1024_40k_cityscapes",
    "pspnet_r50-d8": "pspnet/pspnet_r50-d8_512x1024_40k_cityscapes",
    "deeplabv3_r50-d8": "deeplabv3/deeplabv3_r50-d8_512x1024_40k_cityscapes",
    "deeplabv3plus_r50-d8": "deeplabv3plus/deeplabv3plus_r50-d8_512x1024_40k_cityscapes",
    "upernet_r50": "upernet/upernet_r50_512x1024_40k_cityscapes",
    "gcnet_r50-d8": "gcnet/gcnet_r50-d8_512x1024_40k_cityscapes",
    "nonlocal_r50-d8": "nonlocal_net/nonlocal_r50-d8_512x1024_40k_cityscapes",
    "ann_r50-d8": "ann/ann_r50-d8_512x1024_40k_cityscapes",
    "ccnet_r50-d8": "ccnet/ccnet_r50-d8_512x1024_40k_cityscapes",
}


@pytest.mark.parametrize("yaml", sorted(MODELS))
def test_matches_mmseg(yaml):
    ref = mmseg_peer.build_mmseg_model(mmseg_peer.mmseg_config(MODELS[yaml]))
    if yaml.startswith("ccnet"):
        with torch.no_grad():  # Scale(0) gamma at O(1), so the criss-cross branch weighs fully
            ref.decode_head.cca.gamma.scale.fill_(1.0)
    cfg = get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml",
                        ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
                         "MODEL.AUX_HEAD.NORM", "BN"])
    model = build_model(cfg).eval()
    missing, unexpected = model.load_state_dict(convert_mmseg_state_dict(ref.state_dict()),
                                                strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    img = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max() < 1e-4
