"""STDC1 / STDC2 (STDCContextPathNet) with its four heads: d2seg vs MMSegmentation 0.30 with the
same (randomised) weights, loaded from an mmseg-format checkpoint file through SegCheckpointer.
Logits and the four backbone outputs at an odd size in eval mode; in training mode the losses of
all heads, STDCHead's detail loss (Laplacian boundary target, sigmoid BCE + Dice) included."""
import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import SegCheckpointer
from d2seg.modeling.heads.stdc import boundary_targets
from test_parity_realtime import _assert_model_matches

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

MMSEG_CONFIG = "stdc/stdc1_512x1024_80k_cityscapes"
VARIANTS = {  # d2seg options, mmseg backbone_cfg changes
    "stdc1": ([], {}),
    "stdc2": (["MODEL.STDC.TYPE", "STDCNet2"], {"stdc_type": "STDCNet2"}),
    "stdc1_add": (["MODEL.STDC.BOTTLENECK_TYPE", "add"], {"bottleneck_type": "add"}),
}


def _pair(variant, tmp_path):
    """mmseg's model (random weights and BN statistics) and d2seg's, loaded from the mmseg
    checkpoint file by SegCheckpointer (format detection + key conversion, strict)."""
    opts, backbone_cfg = VARIANTS[variant]
    cfg = mmseg_peer.mmseg_config(MMSEG_CONFIG)
    cfg.model.backbone.backbone_cfg.update(backbone_cfg)
    ref = mmseg_peer.build_mmseg_model(cfg)
    with torch.no_grad():  # a frozen constant in mmseg, which randomize_ (all Parameters) drew
        ref.auxiliary_head[2].fusion_kernel.copy_(torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1))
    path = str(tmp_path / "mmseg.pth")
    torch.save({"meta": {}, "state_dict": ref.state_dict()}, path)
    model = build_model(get_d2seg_cfg(REPO_CONFIGS / "_base_/models/stdc.yaml", opts))
    ckpt = SegCheckpointer(model)
    ckpt.load(path)
    assert not ckpt.last_report.errors and not ckpt.last_report.aux_missing
    return ref, model.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stdc_matches_mmseg(variant, tmp_path):
    ref, model = _pair(variant, tmp_path)
    _assert_model_matches(ref, model, ("detail", "context16", "context8", "fusion"),
                          size=(133, 197))  # odd at every stride (67x99 ... 5x7)


def _blocky_labels(n, h, w, g):
    """Labels made of regions (random 19-class cells of ~8x8 px) with ignored pixels, so that
    the boundary target has both classes in sizeable amounts."""
    cells = torch.randint(0, 19, (n, 1, h // 8 + 1, w // 8 + 1), generator=g).float()
    label = torch.nn.functional.interpolate(cells, size=(h, w), mode="nearest")[:, 0].long()
    label[:, h // 3: h // 2, w // 4: w // 2] = 255
    label[torch.rand(n, h, w, generator=g) < 0.05] = 255
    return label


@pytest.mark.parametrize("variant", ["stdc1", "stdc2"])
def test_stdc_training_losses_match_mmseg(variant, tmp_path):
    """BN in training mode, dropout off: the decode head's and two FCN auxiliary heads' OHEM
    cross-entropy, and STDCHead's BCE and Dice on the boundary target."""
    ref, model = _pair(variant, tmp_path)
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 66, 98, generator=g)
    label = _blocky_labels(2, 66, 98, g)
    head = model.auxiliary_heads[2]
    target = boundary_targets(label, head.laplacian_kernel, head.fusion_kernel, 0.1)
    assert 0.02 < target.float().mean() < 0.98  # both classes: the loss checks something
    expected, got = mmseg_peer.training_losses(ref, model, img, label)
    pairs = [("loss_sem_seg", "decode.loss_ce"), ("loss_aux", "aux_0.loss_ce"),
             ("loss_aux_2", "aux_1.loss_ce"), ("loss_aux_3", "aux_2.loss_ce"),
             ("loss_aux_3_dice", "aux_2.loss_dice")]
    assert set(got) == {k for k, _ in pairs}
    for ours, theirs in pairs:
        assert abs(got[ours].item() - expected[theirs].item()) <= 1e-5 * expected[theirs].item()
    # the detail loss's gradient reaches the backbone as in mmseg
    got["loss_aux_3"].backward()
    expected["aux_2.loss_ce"].backward()
    ours = model.backbone.backbone.stages[2][0].layers[0].weight.grad
    theirs = ref.backbone.backbone.stages[2][0].layers[0].conv.weight.grad
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())
