"""Training from scratch starts where mmseg's does: the dilated ResNet's initialisation without
a checkpoint equals mmseg's ResNetV1c (Kaiming fan_out convs, norms 1/0, each block's last norm
at 0), tensor for tensor after d2seg's key conversion (zeros and ones exactly, conv scales by
their standard deviation)."""
import pytest
import torch

from detectron2.layers import ShapeSpec

from common import get_d2seg_cfg
from d2seg.checkpoint.mmseg import convert_mmseg_key
from d2seg.modeling.backbone.resnet import build_dilated_resnet_backbone


def _d2seg_backbone(depth, width, zero_init=True):
    cfg = get_d2seg_cfg(opts=[
        "MODEL.RESNETS.DEPTH", str(depth), "MODEL.RESNETS.NORM", "BN",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", str(width), "MODEL.RESNETS.RES2_OUT_CHANNELS",
        str(width if depth < 50 else 4 * width), "MODEL.RESNETS.WIDTH_PER_GROUP", str(width),
        "MODEL.RESNETS.ZERO_INIT_RESIDUAL", str(zero_init), "MODEL.RESNETS.STEM_TYPE", "deeplab",
        "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
    ])
    return build_dilated_resnet_backbone(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize("depth", [18, 50])
def test_from_scratch_init_equals_mmseg(depth):
    pytest.importorskip("mmseg")
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.models.backbones import ResNetV1c

    width = 32
    torch.manual_seed(0)
    ref = ResNetV1c(depth=depth, stem_channels=width, base_channels=width,
                    dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1), contract_dilation=True)
    ref.init_weights()
    ours = {k: v for k, v in _d2seg_backbone(depth, width).state_dict().items()}
    theirs = {convert_mmseg_key("backbone." + k)[len("backbone."):]: v
              for k, v in ref.state_dict().items()}
    assert set(ours) == set(theirs)
    zeros = 0
    for k, v in theirs.items():
        if k.endswith("num_batches_tracked"):
            continue
        if v.dim() == 4:  # conv: same distribution, N(0, 2 / fan_out)
            fan_out = v.shape[0] * v.shape[2] * v.shape[3]
            expected = (2.0 / fan_out) ** 0.5
            for t in (v, ours[k]):
                assert abs(t.std().item() / expected - 1) < 0.25, (k, t.std(), expected)
        else:  # norms and statistics: exactly mmseg's constants
            assert torch.equal(ours[k], v), k
            zeros += k.endswith("norm.weight") and not v.any()
    blocks = {18: 8, 50: 16}[depth]
    assert zeros == blocks  # every block's last norm starts at 0


def test_zero_init_residual_can_be_turned_off():
    sd = _d2seg_backbone(18, 16, zero_init=False).state_dict()
    assert all(v.eq(1).all() for k, v in sd.items() if k.endswith("norm.weight"))
