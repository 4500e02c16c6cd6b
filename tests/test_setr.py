"""SETR beyond parity (tests/parity/test_parity_setr.py) and export (tests/test_export.py): bad
config values of its heads and neck are named in the errors, and its per-head keys reach the
heads they are set on."""
import pytest

from detectron2.modeling import build_model

from export_models import tiny_method_cfg


@pytest.mark.parametrize("method, opts, message", [
    ("setr_naive", ["MODEL.SEM_SEG_HEAD.KERNEL_SIZE", 2], r"KERNEL_SIZE=2 must be 1 or 3"),
    ("setr_naive", ["MODEL.SEM_SEG_HEAD.NUM_CONVS", 0], r"NUM_CONVS=0 >= 1"),
    ("setr_pup", ["MODEL.SEM_SEG_HEAD.UP_SCALE", 0], r"UP_SCALE=0 of the SETRUPHead head"),
    ("setr_naive", ["MODEL.SEM_SEG_HEAD.INPUT_TRANSFORM", "resize_concat",
                    "MODEL.SEM_SEG_HEAD.IN_FEATURES", ["vit0", "vit1"]],
     r"SETRUPHead reads one feature map: INPUT_TRANSFORM='resize_concat'"),
    ("setr_mla", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 24],
     r"CONVS_DIM=24 must be the number of IN_FEATURES \(2\) x "
     r"MODEL.SETR_MLA_HEAD.MLA_CHANNELS=8"),
    ("setr_mla", ["MODEL.SEM_SEG_HEAD.UP_SCALE", -2], r"UP_SCALE=-2 of the SETRMLAHead head"),
    ("setr_mla", ["MODEL.NECK.MLA.ACTIVATION", "GELU"],
     r"MODEL.NECK.MLA.ACTIVATION='GELU': not one of \('', 'ReLU'\)"),
    ("setr_mla", ["MODEL.NECK.IN_FEATURES", ["vit0", "vit5"]], r"\['vit5'\] not among"),
])
def test_bad_config_values_are_named(method, opts, message):
    with pytest.raises(ValueError, match=message):
        build_model(tiny_method_cfg(method, opts))


def test_per_head_keys_reach_their_heads():
    """PUP's decode head upsamples x2 per conv, its auxiliary heads x4 (UP_SCALE and NUM_CONVS
    read from each head's own node)."""
    model = build_model(tiny_method_cfg("setr_pup", [
        "MODEL.AUX_HEAD.NAME", "SETRUPHead", "MODEL.AUX_HEAD.IN_FEATURES", ["vit0"],
        "MODEL.AUX_HEAD.NUM_CONVS", 2, "MODEL.AUX_HEAD.CONVS_DIM", 8]))
    up = [m.scale for m in model.decode_head.up_convs.modules() if hasattr(m, "scale")]
    assert up == [2, 2, 2, 2]
    aux = model.auxiliary_heads[0]
    assert [seq[1].scale for seq in aux.up_convs] == [4, 4] and aux.channels == 8
