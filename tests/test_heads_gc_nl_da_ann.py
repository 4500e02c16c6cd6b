"""GCNet (GCHead, ContextBlock), NonLocal (NLHead, NonLocal2d), DANet (DAHead, PAM/CAM) and
ANN (ANNHead, SelfAttentionBlock)."""
import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model
from detectron2.utils.events import EventStorage

from common import random_batch, tiny_cfg
from d2seg.checkpoint.mmseg import convert_mmseg_key
from d2seg.modeling.heads import ANNHead, DAHead, GCHead, NLHead
from d2seg.modeling.layers.context_block import ContextBlock
from d2seg.modeling.layers.non_local import NonLocal2d
from d2seg.modeling.layers.self_attention import SelfAttentionBlock

ANN_OPTS = ["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res4", "res5"],
            "MODEL.SEM_SEG_HEAD.INPUT_TRANSFORM", "multiple_select",
            "MODEL.ANN_HEAD.PROJECT_CHANNELS", 8]
HEADS = {"GCHead": [], "NLHead": [], "DAHead": [], "ANNHead": ANN_OPTS}
SHAPE = {"res4": ShapeSpec(channels=16, stride=8), "res5": ShapeSpec(channels=24, stride=8)}
COMMON = dict(num_classes=5, channels=16, norm="BN")


def _heads():
    return {
        "GCHead": GCHead(SHAPE, in_features=["res5"], **COMMON),
        "NLHead": NLHead(SHAPE, in_features=["res5"], **COMMON),
        "DAHead": DAHead(SHAPE, in_features=["res5"], pam_channels=4, **COMMON),
        "ANNHead": ANNHead(SHAPE, in_features=["res4", "res5"], input_transform="multiple_select",
                           project_channels=8, **COMMON),
    }


@pytest.mark.parametrize("name", list(HEADS))
def test_head_shapes_and_registry(name):
    head = _heads()[name].eval()
    assert SEM_SEG_HEADS_REGISTRY.get(name) is type(head)
    feats = {"res4": torch.randn(2, 16, 9, 11), "res5": torch.randn(2, 24, 9, 11)}
    logits, losses = head(feats)
    assert logits.shape == (2, 5, 9, 11) and losses == {} and head.common_stride == 8


@pytest.mark.parametrize("name", list(HEADS))
def test_gradients_reach_every_parameter(name):
    model = build_model(tiny_cfg(head=name, opts=HEADS[name]))
    with torch.no_grad():  # zero-init layers (and Scale(0)) would block earlier gradients
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.1)
    losses = model(random_batch())
    sum(losses.values()).backward()
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead


def test_zero_init_layers():
    heads = _heads()
    add = heads["GCHead"].gc_block.channel_add_conv
    assert not add[3].weight.any() and not add[3].bias.any() and add[0].weight.any()
    assert tuple(add[1].normalized_shape) == (4, 1, 1)  # LayerNorm([C * ratio, 1, 1])
    nl = heads["NLHead"].nl_block
    assert not nl.conv_out.norm.weight.any() and nl.conv_out.bias is None
    assert nl.g.bias is not None and nl.g.norm is None and nl.g.weight.std() < 0.03
    da = heads["DAHead"]
    assert da.pam.gamma.scale.item() == 0 and da.cam.gamma.scale.item() == 0
    ann = heads["ANNHead"]
    for block in (ann.fusion, ann.context):
        out = block.stages[0].out_project
        assert not out.weight.any() and not out.bias.any()
        assert block.stages[0].value_project.weight.any()


def test_blocks_start_as_identity():
    x = torch.randn(2, 16, 5, 6)
    torch.testing.assert_close(ContextBlock(16, 0.25)(x), x)
    torch.testing.assert_close(NonLocal2d(16, norm="BN").eval()(x), x)
    da = _heads()["DAHead"]
    torch.testing.assert_close(da.pam(x), x)
    torch.testing.assert_close(da.cam(x), x)


def test_danet_three_losses_in_training_one_output_at_test():
    model = build_model(tiny_cfg(head="DAHead"))
    with EventStorage() as storage:
        losses = model(random_batch())
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_pam", "loss_sem_seg_cam", "loss_aux"}
    assert len(storage.history("acc_seg").values()) == 1  # accuracy of the fused output only
    model.eval()
    with torch.no_grad():
        out = model(random_batch(n=1, h=40, w=56))
    assert len(out) == 1 and out[0]["sem_seg"].shape == (5, 40, 56)
    # as any head, the losses follow the head's loss name and weight
    head = DAHead(SHAPE, in_features=["res5"], pam_channels=4, loss_name="loss_x",
                  loss_weight=0.5, dropout_ratio=0, **COMMON)
    logits, losses = head({"res5": torch.randn(1, 24, 6, 7)}, torch.randint(0, 5, (1, 48, 56)))
    assert logits.shape == (1, 5, 6, 7) and head.dropout is None
    assert set(losses) == {"loss_x", "loss_x_pam", "loss_x_cam"}


def test_ann_shares_key_and_query_in_apnb_only():
    ann = _heads()["ANNHead"]
    assert ann.context.stages[0].query_project is ann.context.stages[0].key_project
    assert ann.fusion.stages[0].query_project is not ann.fusion.stages[0].key_project
    keys = ann.state_dict()
    # mmseg's checkpoints hold both names of the shared projection
    assert "context.stages.0.key_project.weight" in keys
    assert "context.stages.0.query_project.weight" in keys
    assert ann.fusion.bottleneck.activation is None  # AFNB: no ReLU; APNB: ReLU
    assert ann.context.bottleneck.activation is not None
    assert ann.fusion.bottleneck.in_channels == 48 and ann.context.bottleneck.in_channels == 32
    n = 1 + 9 + 36 + 64  # PPMConcat(1, 3, 6, 8) positions
    assert ann.fusion.stages[0].key_downsample(torch.randn(1, 8, 9, 11)).shape == (1, 8, n)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="multiple_select"):
        ANNHead(SHAPE, in_features=["res5"], project_channels=8, **COMMON)
    with pytest.raises(ValueError, match="NUM_CONVS"):
        GCHead(SHAPE, in_features=["res5"], num_convs=1, **COMMON)
    with pytest.raises(ValueError, match="NUM_CONVS"):
        NLHead(SHAPE, in_features=["res5"], num_convs=3, **COMMON)
    with pytest.raises(ValueError, match="pooling_type"):
        ContextBlock(16, 0.25, pooling_type="max")
    with pytest.raises(ValueError, match="fusion_types"):
        ContextBlock(16, 0.25, fusion_types=())
    with pytest.raises(ValueError, match="mode"):
        NonLocal2d(16, mode="gaussian")


# ---- the bricks against mmcv / mmseg, in the variants the model parity tests do not cover ----
def _load_from(ours, theirs):
    from mmseg_peer import randomize_

    randomize_(theirs)
    sd = {convert_mmseg_key("h." + k)[2:]: v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(sd, strict=True)
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize("pooling,fusion", [("avg", ("channel_mul",)),
                                            ("att", ("channel_add", "channel_mul"))])
def test_context_block_matches_mmcv(pooling, fusion):
    mmseg_peer = pytest.importorskip("mmseg_peer")
    mmseg_peer.stub_mmcv_ext()
    from mmcv.cnn import ContextBlock as MMCVContextBlock

    ours, theirs = _load_from(ContextBlock(16, 0.5, pooling, fusion),
                              MMCVContextBlock(16, 0.5, pooling, fusion))
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("mode,use_scale", [("embedded_gaussian", False), ("dot_product", True)])
def test_non_local_matches_mmcv(mode, use_scale):
    mmseg_peer = pytest.importorskip("mmseg_peer")
    mmseg_peer.stub_mmcv_ext()
    from mmcv.cnn import NonLocal2d as MMCVNonLocal2d

    ours, theirs = _load_from(NonLocal2d(16, 4, use_scale, norm="BN", mode=mode),
                              MMCVNonLocal2d(16, reduction=4, use_scale=use_scale,
                                             norm_cfg=dict(type="BN"), mode=mode))
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(ours(x), theirs(x))


def test_self_attention_block_matches_mmseg_stacked_projections():
    # OCRNet's flavour: 2-conv key/query stacks, conv-norm-ReLU value/out projections
    mmseg_peer = pytest.importorskip("mmseg_peer")
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models.utils import SelfAttentionBlock as MMSegSelfAttentionBlock

    args = dict(key_in_channels=12, query_in_channels=16, channels=8, out_channels=16,
                share_key_query=False, query_downsample=None, key_downsample=None,
                key_query_num_convs=2, value_out_num_convs=1, key_query_norm=True,
                value_out_norm=True, matmul_norm=True, with_out=True)
    ours, theirs = _load_from(
        SelfAttentionBlock(**args, norm="BN"),
        MMSegSelfAttentionBlock(**args, conv_cfg=None, norm_cfg=dict(type="BN"),
                                act_cfg=dict(type="ReLU")))
    assert isinstance(ours.key_project, torch.nn.Sequential) and len(ours.key_project) == 2
    assert ours.out_project.weight.any()  # a conv-norm out_project is not zeroed (mmseg)
    q, k = torch.randn(2, 16, 5, 7), torch.randn(2, 12, 4, 3)
    torch.testing.assert_close(ours(q, k), theirs(q, k))
