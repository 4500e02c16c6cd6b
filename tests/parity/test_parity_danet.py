"""DANet R-50-D8: d2seg vs MMSegmentation 0.30 with the same (randomised) weights, including
the PAM/CAM outputs and the three training losses."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")


def test_danet_r50_d8_matches_mmseg():
    ref = mmseg_peer.build_mmseg_model(
        mmseg_peer.mmseg_config("danet/danet_r50-d8_512x1024_40k_cityscapes"))
    with torch.no_grad():  # gammas of order 1, so that both attentions weigh in the output
        ref.decode_head.pam.gamma.scale.fill_(0.8)
        ref.decode_head.cam.gamma.scale.fill_(1.2)
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/danet_r50-d8.yaml",
                        ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
                         "MODEL.AUX_HEAD.NORM", "BN"])
    model = build_model(cfg).eval()
    sd = convert_mmseg_state_dict(ref.state_dict())
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    img = torch.randn(1, 3, 64, 96)
    g = torch.Generator().manual_seed(1)
    label = torch.randint(0, 19, (1, 64, 96), generator=g)
    label[torch.rand(1, 64, 96, generator=g) < 0.1] = 255
    with torch.no_grad():
        expected = ref.encode_decode(img, [{}])
        got = model.encode_decode(img)
        # per-output logits (dropout off in eval) and the three losses
        ref_feats = ref.extract_feat(img)
        ref_outs = ref.decode_head(ref_feats)
        ref_losses = ref.decode_head.losses(ref_outs, label[:, None])
        head = model.decode_head
        feats = model.backbone(img)
        pam_feat, cam_feat = head.branches(head.transform_inputs(feats))
        outs = (head.cls_seg(pam_feat + cam_feat), head.pam_cls_seg(pam_feat),
                head.cam_cls_seg(cam_feat))
        _, losses = head(feats, label)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max() < 1e-4
    for out, ref_out in zip(outs, ref_outs):
        assert ref_out.abs().max() > 0.1
        assert (out - ref_out).abs().max() < 1e-4
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_pam", "loss_sem_seg_cam"}
    for key, ref_key in [("loss_sem_seg", "pam_cam.loss_ce"), ("loss_sem_seg_pam", "pam.loss_ce"),
                         ("loss_sem_seg_cam", "cam.loss_ce")]:
        torch.testing.assert_close(losses[key], ref_losses[ref_key], rtol=1e-5, atol=1e-5)
