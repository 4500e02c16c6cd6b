"""SETR (VisionTransformer + SETRUPHead naive / PUP with three SETRUPHead auxiliary heads, and
MLANeck + SETRMLAHead with four FCN auxiliary heads): d2seg vs MMSegmentation 0.30 with the same
(randomised) weights, read from an mmseg checkpoint file by SegCheckpointer, at a narrow width
(embed 32, 4 layers, 2 heads, pos_embed grid 4x4 for img_size 64, heads of 16 channels): the
logits of the decode head and of every auxiliary head at 65x97 (padded to 80x112: a 5x7 grid,
pos_embed resized bilinearly) in float32 and float64, for mmseg's three base configs and the
ADE20K naive config (auxiliary heads of 2 convs); one training step's five losses and every
gradient for MLA (float64); the from-scratch init of the heads and the neck against mmseg's
init_weights."""
from types import SimpleNamespace

import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from test_checkpoint_formats import one_thread  # noqa: F401  (autouse: small inputs, 1 thread)
from test_parity_segmenter import assert_same_head_init

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

WIDTH, LAYERS, HEADS, IMG, CH = 32, 4, 2, 64, 16
OUTS = [f"vit{i}" for i in range(LAYERS)]
SIZE = (65, 97)
AUX_NODES = ["AUX_HEAD", "AUX_HEAD_2", "AUX_HEAD_3", "AUX_HEAD_4"]
# SETR-MLA drops the class token after adding pos_embed: it never reaches the loss; the neck's
# LN biases are a per-channel constant after the 1x1 projection, which training-mode BN removes
THEORY_ZERO_MLA = {"backbone.cls_token"} | {f"neck.norm.{i}.bias" for i in range(LAYERS)}


def _narrow(variant):
    """d2seg overrides of configs/_base_/models/setr_<variant>.yaml for the narrow model."""
    opts = ["MODEL.VIT.EMBED_DIMS", WIDTH, "MODEL.VIT.NUM_LAYERS", LAYERS,
            "MODEL.VIT.NUM_HEADS", HEADS, "MODEL.VIT.IMG_SIZE", [IMG, IMG],
            "MODEL.VIT.OUT_INDICES", list(range(LAYERS)), "MODEL.VIT.DROP_RATE", 0.0,
            "MODEL.SEM_SEG_HEAD.NORM", "BN"]
    if variant == "mla":
        opts += ["MODEL.NECK.IN_FEATURES", OUTS, "MODEL.NECK.OUT_CHANNELS", CH,
                 "MODEL.NECK.MLA.NORM", "BN", "MODEL.SEM_SEG_HEAD.CONVS_DIM", 2 * CH,
                 "MODEL.SETR_MLA_HEAD.MLA_CHANNELS", CH // 2]
        for node in AUX_NODES:
            opts += [f"MODEL.{node}.CONVS_DIM", CH, f"MODEL.{node}.NORM", "BN"]
        return opts
    opts += ["MODEL.SEM_SEG_HEAD.IN_FEATURES", OUTS[-1:], "MODEL.SEM_SEG_HEAD.CONVS_DIM", CH]
    for node, feat in zip(AUX_NODES, OUTS[:-1]):
        opts += [f"MODEL.{node}.IN_FEATURES", [feat], f"MODEL.{node}.CONVS_DIM", CH,
                 f"MODEL.{node}.NORM", "BN"]
    return opts


# (mmseg config, d2seg base yaml, d2seg overrides of the variant)
VARIANTS = {
    "naive": ("_base_/models/setr_naive", "naive", []),
    "pup": ("_base_/models/setr_pup", "pup", []),
    "mla": ("_base_/models/setr_mla", "mla", []),
    "naive_ade": ("setr/setr_naive_512x512_160k_b16_ade20k", "naive",
                  ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150]
                  + sum(([f"MODEL.{n}.NUM_CONVS", 2] for n in AUX_NODES[:3]), [])),
}


def _mmseg_cfg(name):
    cfg = mmseg_peer.mmseg_config(name)
    cfg.model.backbone.update(embed_dims=WIDTH, num_layers=LAYERS, num_heads=HEADS,
                              img_size=(IMG, IMG), out_indices=tuple(range(LAYERS)),
                              drop_rate=0.0)
    if cfg.model.get("neck"):
        cfg.model.neck.update(in_channels=[WIDTH] * LAYERS, out_channels=CH)
        cfg.model.decode_head.update(in_channels=(CH,) * LAYERS, channels=2 * CH,
                                     mla_channels=CH // 2)
        for aux in cfg.model.auxiliary_head:
            aux.update(in_channels=CH, channels=CH)
    else:
        cfg.model.decode_head.update(in_channels=WIDTH, channels=CH)
        for aux in cfg.model.auxiliary_head:
            aux.update(in_channels=WIDTH, channels=CH)
    return cfg


def _pair(tmp_path, variant):
    """mmseg's model (random weights, BN statistics calibrated at SIZE) and d2seg's, loaded from
    its mmseg 0.x checkpoint file by SegCheckpointer (detection, conversion, strict check)."""
    name, yaml, opts = VARIANTS[variant]
    ref = mmseg_peer.build_mmseg_model(_mmseg_cfg(name))
    torch.manual_seed(0)
    mmseg_peer.calibrate_bn_(ref, mmseg_peer.calibration_images(2, SIZE))
    cfg = get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/setr_{yaml}.yaml", _narrow(yaml) + opts)
    model = build_model(cfg)
    return ref, mmseg_peer.load_via_checkpointer(ref, model, tmp_path / f"setr_{variant}.pth")


_assert_close = mmseg_peer.assert_close_to_scale


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_setr_logits_match_mmseg(tmp_path, variant, dtype, rel):
    ref, model = _pair(tmp_path, variant)
    img, expected, got = mmseg_peer.logits_in(ref, model, SIZE, dtype)
    with torch.no_grad():
        ref_feats = ref.extract_feat(img)
        feats = model.extract_feat(img)
        aux_expected = [head(ref_feats) for head in ref.auxiliary_head]
        aux = [head(feats)[0] for head in model.auxiliary_heads]
        decode_expected = ref.decode_head(ref_feats)
        decode = model.decode_head(feats)[0]
    assert 0.1 < expected.abs().max() < 100  # the comparison is not of zeros
    assert expected.shape[-2:] == SIZE
    _assert_close(got, expected, rel)
    # before the resize to the input: PUP reaches the padded input's size (5x7 x 16), the
    # others 1/4 of it
    assert decode_expected.shape[-2:] == ((80, 112) if variant == "pup" else (20, 28))
    _assert_close(decode, decode_expected, rel, what="decode logits")
    assert len(aux) == len(aux_expected) == (4 if variant == "mla" else 3)
    for a, r in zip(aux, aux_expected):
        _assert_close(a, r, rel, what="aux logits")
    if variant == "mla":  # the neck's outputs, in mmseg's (reversed) order
        for i, r in enumerate(ref_feats):
            _assert_close(feats[f"mla{i}"], r, rel, what="neck")


def test_setr_mla_training_step_matches_mmseg(tmp_path):
    """The decode loss, the four auxiliary losses and every gradient (neck and backbone
    included), in float64, BN in training mode, no dropout."""
    ref, model = _pair(tmp_path, "mla")
    ref.double()
    model.double()
    g = torch.Generator().manual_seed(0)
    imgs = mmseg_peer.calibration_images(2, (64, 80), seed=2).double()
    labels = torch.randint(0, 19, (2, 64, 80), generator=g)
    labels[torch.rand(2, 64, 80, generator=g) < 0.1] = 255
    ref_losses, losses = mmseg_peer.training_losses(ref, model, imgs, labels)
    pairs = [("loss_sem_seg", "decode.loss_ce"), ("loss_aux", "aux_0.loss_ce")]
    pairs += [(f"loss_aux_{i + 1}", f"aux_{i}.loss_ce") for i in range(1, 4)]
    assert set(losses) == {ours for ours, _ in pairs}
    sum(ref_losses[theirs] for _, theirs in pairs).backward()
    sum(losses.values()).backward()
    for ours, theirs in pairs:
        assert abs(losses[ours].item() - ref_losses[theirs].item()) <= 1e-10 * ref_losses[
            theirs].item(), ours
    ref_grads = convert_mmseg_state_dict({k: p.grad for k, p in ref.named_parameters()},
                                         is_resnet=False)
    mmseg_peer.assert_same_gradients(ref_grads, {k: p.grad for k, p in model.named_parameters()},
                                     rel=1e-8, theory_zero=THEORY_ZERO_MLA, zero_rel=1e-12)


@pytest.mark.parametrize("variant", ["naive", "pup", "mla"])
def test_setr_heads_and_neck_init_equal_mmseg(variant):
    """From scratch, every tensor of the decode head, the auxiliary heads and the neck has the
    statistics of mmseg's init_weights (kaiming fan_out convs, LayerNorms and BNs 1/0, N(0, 0.01)
    classifiers, zero biases)."""
    mmseg_peer.stub_mmcv_ext()
    from mmseg.models import build_segmentor

    name, yaml, opts = VARIANTS[variant]
    cfg = _mmseg_cfg(name)
    cfg.model.pretrained = None
    mmseg_peer.syncbn_to_bn(cfg.model)
    torch.manual_seed(0)
    ref = build_segmentor(cfg.model)
    ref.init_weights()
    model = build_model(get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/setr_{yaml}.yaml",
                                      _narrow(yaml) + opts))
    pairs = [(model.decode_head, ref.decode_head)]
    pairs += list(zip(model.auxiliary_heads, ref.auxiliary_head, strict=True))
    if variant == "mla":
        pairs.append((model.neck, ref.neck))
    for ours, theirs in pairs:  # (mmseg's key conversion applies to any module's keys)
        sd = ours.state_dict()
        assert_same_head_init(
            SimpleNamespace(state_dict=lambda sd=sd: {"decode_head." + k: v
                                                     for k, v in sd.items()}), theirs)
