import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model

from common import random_batch, tiny_cfg
from d2seg.modeling.heads import FCNHead


def test_fcn_head_shapes_and_layers():
    shape = {"res5": ShapeSpec(channels=64, stride=8)}
    head = FCNHead(shape, in_features=["res5"], num_classes=7, channels=32, norm="BN",
                   num_convs=2, kernel_size=3, concat_input=True)
    assert len(head.convs) == 2 and head.conv_cat.in_channels == 64 + 32
    logits, losses = head({"res5": torch.randn(2, 64, 9, 11)})
    assert logits.shape == (2, 7, 9, 11) and losses == {}
    assert head.common_stride == 8


def test_fcn_head_hrnet_style_resize_concat():
    shape = {f"hr{i}": ShapeSpec(channels=c, stride=4 * 2 ** (i - 1)) for i, c in enumerate([4, 8, 16, 32], 1)}
    head = FCNHead(shape, in_features=list(shape), input_transform="resize_concat", num_classes=3,
                   channels=60, norm="BN", num_convs=1, kernel_size=1, concat_input=False,
                   dropout_ratio=-1)
    assert head.in_channels == 60 and head.dropout is None
    feats = {f"hr{i}": torch.randn(1, c, 32 // 2 ** (i - 1), 32 // 2 ** (i - 1)) for i, c in enumerate([4, 8, 16, 32], 1)}
    assert head(feats)[0].shape == (1, 3, 32, 32)


def test_fcn_head_rejects_bad_settings():
    shape = {"res5": ShapeSpec(channels=64, stride=8), "res4": ShapeSpec(channels=32, stride=8)}
    with pytest.raises(ValueError, match="res3"):
        FCNHead(shape, in_features=["res3"], num_classes=3, channels=8)
    with pytest.raises(ValueError, match="INPUT_TRANSFORM"):
        FCNHead(shape, in_features=["res4", "res5"], num_classes=3, channels=8)
    with pytest.raises(ValueError, match="CLASS_WEIGHT"):
        FCNHead(shape, in_features=["res5"], num_classes=3, channels=8, class_weight=[1.0, 2.0])


def test_fcn_registered_and_aux_loss_weight():
    assert SEM_SEG_HEADS_REGISTRY.get("FCNHead") is FCNHead
    model = build_model(tiny_cfg())
    losses = model(random_batch())
    assert set(losses) == {"loss_sem_seg", "loss_aux"}
    assert model.auxiliary_heads[0].loss_weight == pytest.approx(0.4)
    # the aux head reads res4 (in_index=2) with one conv, no concat, as mmseg's auxiliary_head
    aux = model.auxiliary_heads[0]
    assert aux.in_features == ["res4"] and len(aux.convs) == 1 and not aux.concat_input
