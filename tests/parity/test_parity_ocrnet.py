"""OCRNet (CascadeEncoderDecoder + OCRHead): d2seg vs MMSegmentation 0.30 with the same
(randomised) weights, HRNetV2-W18 and R-50-D8 (mmseg's R-101-D8 config at depth 50)."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from test_parity_hrnet import calibrate_bn_

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

BN = ["MODEL.HRNET.NORM", "BN", "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
      "MODEL.CASCADE_HEAD.NORM", "BN"]


def _pair(mmseg_cfg, yaml_name, is_resnet, img):
    ref = mmseg_peer.build_mmseg_model(mmseg_cfg)
    calibrate_bn_(ref, img)
    model = build_model(get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml_name}.yaml", BN)).eval()
    sd = convert_mmseg_state_dict(ref.state_dict(), is_cascade=True, is_resnet=is_resnet)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
    # OCR's key/value BNs normalise 19 class centres of tiny spread, which amplifies any shift:
    # even calibrated, the logits reach O(100) (HRNet) where FCN's are O(1).
    assert 0.1 < expected.abs().max() < 1000
    assert (got - expected).abs().max() < 1e-4
    return ref, model


def test_ocrnet_hr18_matches_mmseg():
    cfg = mmseg_peer.mmseg_config("ocrnet/ocrnet_hr18_512x1024_40k_cityscapes")
    ref, model = _pair(cfg, "ocrnet_hr18", False, torch.randn(1, 3, 64, 96))

    # Training (the HRNet version has no dropout, so it is deterministic): same losses, and the
    # same BN statistics afterwards, which holds only if stage 0 runs twice here too.
    ref.train()
    model.train()
    img = torch.randn(2, 3, 32, 64)
    gt = torch.randint(0, 19, (2, 32, 64))
    gt[:, :4] = 255
    meta = dict(img_shape=(32, 64, 3), ori_shape=(32, 64, 3), pad_shape=(32, 64, 3), flip=False)
    ref_losses = ref.forward_train(img, [meta] * 2, gt[:, None])
    losses = model.compute_losses(model.backbone(img), gt)
    assert set(losses) == {"loss_cascade", "loss_sem_seg"}
    assert torch.allclose(losses["loss_cascade"], ref_losses["decode_0.loss_ce"], atol=1e-5)
    assert torch.allclose(losses["loss_sem_seg"], ref_losses["decode_1.loss_ce"], atol=1e-5)
    ref_sd = convert_mmseg_state_dict(ref.state_dict(), is_cascade=True, is_resnet=False)
    sd = model.state_dict()
    for k in ("cascade_head.convs.0.norm.running_mean",
              "cascade_head.convs.0.norm.num_batches_tracked",
              "decode_head.bottleneck.norm.running_var"):
        assert torch.allclose(sd[k].float(), ref_sd[k].float(), atol=1e-5), k


def test_ocrnet_r50_d8_matches_mmseg():
    cfg = mmseg_peer.mmseg_config("ocrnet/ocrnet_r101-d8_512x1024_40k_b8_cityscapes")
    cfg.model.backbone.depth = 50  # runtime; the d2seg side is ocrnet_r50-d8.yaml
    _pair(cfg, "ocrnet_r50-d8", True, torch.randn(1, 3, 64, 96))
