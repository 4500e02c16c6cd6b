"""K-Net outside the logits parity (tests/parity/test_parity_knet.py): the from-scratch init,
the base configs' generators, bad config values named, and the loss names."""
import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from d2seg.modeling.heads.knet import IterativeDecodeHead

YAML = REPO_CONFIGS / "_base_/models/knet_s3_fcn_r50-d8.yaml"
TINY = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.NORM", "BN",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
        "MODEL.RESNETS.WIDTH_PER_GROUP", 16, "MODEL.SEM_SEG_HEAD.NORM", "BN",
        "MODEL.AUX_HEAD.NORM", "BN", "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5, "MODEL.AUX_HEAD.CONVS_DIM", 8,
        "MODEL.KNET_HEAD.NUM_HEADS", 2, "MODEL.KNET_HEAD.FEEDFORWARD_CHANNELS", 32,
        "MODEL.KNET_HEAD.UPDATOR_IN_CHANNELS", 8, "MODEL.KNET_HEAD.UPDATOR_FEAT_CHANNELS", 8,
        "MODEL.KNET_HEAD.UPDATOR_OUT_CHANNELS", 8]


def test_from_scratch_init_equals_mmseg():
    """mmseg's init_weights reaches the generator (conv_seg N(0, .01), ConvModules Kaiming) but
    not the update heads (nn.ModuleList stops mmcv's recursion: PyTorch's Linear, LayerNorm and
    MultiheadAttention init; feat_transform is a ConvModule, Kaiming at construction). Full
    widths, 150 classes; constants exactly, the rest by spread."""
    pytest.importorskip("mmseg")
    from mmseg_peer import mmseg_config, stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.models import build_head

    cfg = mmseg_config("knet/knet_s3_fcn_r50-d8_8x2_512x512_adamw_80k_ade20k")
    head_cfg = cfg.model.decode_head
    head_cfg.kernel_generate_head.update(in_channels=64, norm_cfg=dict(type="BN"))
    ref = build_head(head_cfg)
    ref.init_weights()
    d2 = get_d2seg_cfg(YAML, ["MODEL.SEM_SEG_HEAD.NORM", "BN"])
    ours = IterativeDecodeHead(d2, {"res5": ShapeSpec(channels=64, stride=8)}).state_dict()
    theirs = {k[len("decode_head."):]: v for k, v in convert_mmseg_state_dict(
        {f"decode_head.{k}": v for k, v in ref.state_dict().items()}).items()}
    assert set(ours) == set(theirs)
    checked = 0
    for k, v in theirs.items():
        if k.endswith("num_batches_tracked"):
            continue
        if v.min() == v.max():  # LN / BN 1/0, zero biases: mmseg's constants exactly
            assert torch.equal(ours[k], v), k
        elif v.numel() >= 256:  # same distribution (spread within 15 %, centred: 4 sigma)
            assert abs(ours[k].std().item() / v.std().item() - 1) < 0.15, k
            assert abs(ours[k].mean().item()) < 4 * v.std().item() / v.numel() ** 0.5, k
            checked += 1
    assert checked > 30
    # (e.g.) PyTorch's Linear init in the update heads, not mmseg's unused xavier init_weights
    w = ours["kernel_update_head.0.fc_mask.weight"]
    assert abs(w.std().item() * (3 * w.shape[1]) ** 0.5 - 1) < 0.05


@pytest.mark.parametrize("yaml, generator", [
    ("knet_s3_fcn_r50-d8", "FCNHead"), ("knet_s3_pspnet_r50-d8", "PSPHead"),
    ("knet_s3_deeplabv3_r50-d8", "ASPPHead"), ("knet_s3_upernet_r50-d8", "UPerHead")])
def test_base_configs_build_their_generator_and_train(yaml, generator):
    model = build_model(get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml", TINY))
    head = model.decode_head
    assert type(head.kernel_generate_head).__name__ == generator
    assert len(head.kernel_update_head) == 3
    img = torch.randn(2, 3, 45, 61)
    label = torch.randint(0, 5, (2, 45, 61))
    model.train()
    losses = model.compute_losses(model.extract_feat(img), label)
    assert set(losses) == {"loss_sem_seg_s0", "loss_sem_seg_s1", "loss_sem_seg_s2",
                           "loss_sem_seg_s3", "loss_aux"}
    sum(losses.values()).backward()
    assert head.kernel_generate_head.conv_seg.weight.grad.abs().max() > 0
    model.eval()
    with torch.no_grad():
        logits = model.encode_decode(img)
        stages = head.stage_logits(model.extract_feat(img))
    assert logits.shape == (2, 5, 45, 61)
    assert torch.equal(head(model.extract_feat(img))[0], stages[-1])  # test: the last stage


@pytest.mark.parametrize("opts, message", [
    (["MODEL.KNET_HEAD.KERNEL_GENERATE_HEAD", "FCNHaed"], "KERNEL_GENERATE_HEAD='FCNHaed'"),
    (["MODEL.KNET_HEAD.KERNEL_GENERATE_HEAD", "IterativeDecodeHead"], "KERNEL_GENERATE_HEAD"),
    (["MODEL.KNET_HEAD.NUM_STAGES", 0], "NUM_STAGES=0"),
    (["MODEL.KNET_HEAD.NUM_HEADS", 3], "NUM_HEADS=3"),
    (["MODEL.KNET_HEAD.CONV_KERNEL_SIZE", 2], "CONV_KERNEL_SIZE=2"),
    (["MODEL.KNET_HEAD.NUM_FFN_FCS", 3], "NUM_FFN_FCS=3"),
    (["MODEL.KNET_HEAD.MASK_TRANSFORM_STRIDE", 4], "MASK_TRANSFORM_STRIDE=4"),
    (["MODEL.KNET_HEAD.UPDATOR_IN_CHANNELS", 6], "UPDATOR_IN_CHANNELS=6"),
    (["MODEL.KNET_HEAD.UPDATOR_OUT_CHANNELS", 16], "UPDATOR_OUT_CHANNELS=16"),
    (["MODEL.KNET_HEAD.FEAT_TRANSFORM_KERNEL_SIZE", 0, "MODEL.KNET_HEAD.FEAT_GATHER_STRIDE", 2],
     "FEAT_GATHER_STRIDE"),
])
def test_bad_config_values_are_named(opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(get_d2seg_cfg(YAML, TINY + opts))
