"""SOLVER.PARAMWISE / SOLVER.LR_DECAY (d2seg/solver_paramwise.py) against mmcv's
DefaultOptimizerConstructor and mmseg's LearningRateDecay / LayerDecay constructors.

Each case builds the optimiser on both sides from the same recipe, checks every parameter's lr
and weight decay, then takes one step with the same gradients and compares the updates. The
paramwise cases use mmseg's SegFormer B0 and d2seg's (whose head norms are named ``.norm`` where
mmseg's are ``.bn``); the layer-decay cases a toy segmentor with mmseg's ConvNeXt / BEiT names.
"""
import copy
import types
import warnings

import pytest
import torch
from torch import nn

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint.mmseg import convert_mmseg_key
from d2seg.checkpoint.convert import mmseg_layout
from d2seg.solver import build_lr_scheduler, build_optimizer

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")


@pytest.fixture(autouse=True)
def _no_mmcv_ops(monkeypatch):
    # mmcv's add_params asks whether mmcv._ext loads (DCN); mmseg_peer's stub has no __spec__
    monkeypatch.setattr("mmcv.runner.optimizer.default_constructor.check_ops_exist", lambda: False)


def _mmseg_optimizer(model, **optimizer):
    from mmseg.core import build_optimizer as mmseg_build_optimizer

    with warnings.catch_warnings():  # LayerDecayOptimizerConstructor's deprecation
        warnings.simplefilter("ignore")
        return mmseg_build_optimizer(model, optimizer)


def _d2seg_cfg(optimizer, lr, wd, opts=()):
    return get_d2seg_cfg(opts=["SOLVER.OPTIMIZER", optimizer, "SOLVER.BASE_LR", lr,
                               "SOLVER.WEIGHT_DECAY", wd, "SOLVER.MAX_ITER", 100,
                               "SOLVER.WARMUP_ITERS", 0, *opts])


def _settings(opt):
    """parameter -> (lr, weight_decay) of its group"""
    return {p: (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def _assert_same_step(pairs, opt, ref_opt, seed=0):
    """One step of each optimiser with the same gradients moves each pair the same way."""
    g = torch.Generator().manual_seed(seed)
    before = []
    for p, q in pairs:
        grad = torch.randn(p.shape, generator=g)
        p.grad, q.grad = grad.clone(), grad.clone()
        before.append((p.detach().clone(), q.detach().clone()))
    opt.step()
    ref_opt.step()
    for (p, q), (p0, q0) in zip(pairs, before):
        d, d_ref = p.detach() - p0, q.detach() - q0
        assert d_ref.abs().max() > 0
        assert (d - d_ref).abs().max() <= 1e-5 * d_ref.abs().max()


def _assert_same_settings(pairs, opt, ref_opt, names):
    got, ref = _settings(opt), _settings(ref_opt)
    assert len(got) == len(pairs)
    for (p, q), name in zip(pairs, names):
        assert got[p] == pytest.approx(ref[q], rel=1e-9, abs=0), name


# ---- mmcv's DefaultOptimizerConstructor (paramwise_cfg) on SegFormer B0 -----------------------

def _segformer_pair():
    """mmseg's and d2seg's SegFormer B0 with the same weights: [(d2seg param, mmseg param)]."""
    ref = mmseg_peer.build_mmseg_model(mmseg_peer.mmseg_config("_base_/models/segformer_mit-b0"))
    model = build_model(get_d2seg_cfg(REPO_CONFIGS / "_base_/models/segformer_mit-b0.yaml",
                                      ["MODEL.SEM_SEG_HEAD.NORM", "BN"]))
    sd = ref.state_dict()
    model.load_state_dict({convert_mmseg_key(k, **mmseg_layout(sd)): v for k, v in sd.items()})
    ours = dict(model.named_parameters())
    names = [n for n, _ in ref.named_parameters()]
    pairs = [(ours[convert_mmseg_key(n, **mmseg_layout(sd))], q) for n, q in ref.named_parameters()]
    assert len(pairs) == len(ours)
    return model, ref, pairs, names


# mmseg's recipes (configs/segformer, configs/swin) and every multiplier, as
# (optimizer, lr, wd, paramwise_cfg) = d2seg's SOLVER.PARAMWISE
PARAMWISE = {
    "segformer": ("AdamW", 6e-5, 0.01, dict(custom_keys={
        "pos_block": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0),
        "head": dict(lr_mult=10.0)})),
    # 'norm' must not hit the head's BNs (mmseg's ConvModule calls them .bn)
    "swin": ("AdamW", 6e-5, 0.01, dict(custom_keys={
        "absolute_pos_embed": dict(decay_mult=0.0),
        "relative_position_bias_table": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0)})),
    # 'attn.attn' (longer) wins over 'attn'; the multipliers apply where no key hits
    "multipliers": ("SGD", 0.01, 5e-4, dict(
        custom_keys={"attn": dict(lr_mult=0.5, decay_mult=2.0),
                     "attn.attn": dict(lr_mult=3.0, decay_mult=0.0),
                     "conv_seg": dict(lr_mult=4.0)},
        bias_lr_mult=2.0, bias_decay_mult=0.0, norm_decay_mult=0.5, dwconv_decay_mult=0.25)),
}


def _paramwise_opts(paramwise_cfg):
    keys = [[k, v.get("lr_mult", 1.0), v.get("decay_mult", 1.0)]
            for k, v in paramwise_cfg.get("custom_keys", {}).items()]
    opts = ["SOLVER.PARAMWISE.CUSTOM_KEYS", keys]
    for k, v in paramwise_cfg.items():
        if k != "custom_keys":
            opts += [f"SOLVER.PARAMWISE.{k.upper()}", v]
    return opts


@pytest.mark.parametrize("recipe", sorted(PARAMWISE))
def test_paramwise_cfg_matches_mmcv(recipe):
    optimizer, lr, wd, paramwise_cfg = PARAMWISE[recipe]
    model, ref, pairs, names = _segformer_pair()
    cfg = _d2seg_cfg(optimizer, lr, wd, _paramwise_opts(paramwise_cfg))
    opt = build_optimizer(cfg, model)
    extra = dict(momentum=0.9) if optimizer == "SGD" else dict(betas=(0.9, 0.999))
    ref_opt = _mmseg_optimizer(ref, type=optimizer, lr=lr, weight_decay=wd,
                               paramwise_cfg=copy.deepcopy(paramwise_cfg), **extra)
    _assert_same_settings(pairs, opt, ref_opt, names)
    got = _settings(opt)
    assert len(set(got.values())) >= 2  # the recipe does change the groups
    assert len(opt.param_groups) == len(set(got.values()))  # equal settings merged
    if recipe == "swin":  # the head's BNs keep their decay, the backbone's LayerNorms lose it
        head_bn = [got[p][1] for (p, _), n in zip(pairs, names) if ".bn." in n]
        ln = [got[p][1] for (p, _), n in zip(pairs, names) if ".norm." in n]
        assert head_bn and set(head_bn) == {wd} and ln and set(ln) == {0.0}
    _assert_same_step(pairs, opt, ref_opt)


# ---- mmseg's LearningRateDecay / LayerDecay constructors on toy backbones with mmseg's names ---

class ToyConvNeXt(nn.Module):
    """mmcls ConvNeXt's names: downsample_layers.i (stem = 0), stages.i.j (dwconv, norm, linear,
    gamma), out-norms norm{i}."""

    def __init__(self, depths=(1, 2, 7, 1), c=4):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3 if i == 0 else c, c, 2, 2), nn.GroupNorm(1, c))
            for i in range(4))
        self.stages = nn.ModuleList(nn.Sequential(*(ToyBlock(c) for _ in range(d))) for d in depths)
        self.norm3 = nn.LayerNorm(c)


class ToyBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.depthwise_conv = nn.Conv2d(c, c, 3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pointwise_conv1 = nn.Linear(c, 2 * c)
        self.gamma = nn.Parameter(torch.ones(c))


class ToyBEiT(nn.Module):
    """mmseg's BEiT names: cls_token, patch_embed.projection, layers.i, norm."""

    def __init__(self, depth=4, c=4):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(3, c, 4, 4)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(c), nn.Linear(c, 3 * c))
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(c)


class ToyMAE(ToyBEiT):
    pass


class ToySegmentor(nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.decode_head = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4),
                                         nn.Conv2d(4, 3, 1))


# (backbone, d2seg's SOLVER.LR_DECAY.TYPE, mmseg's constructor and its paramwise_cfg)
LR_DECAY = {
    "convnext-stage_wise": (ToyConvNeXt, "stage_wise", "LearningRateDecayOptimizerConstructor",
                            dict(decay_rate=0.9, decay_type="stage_wise", num_layers=6)),
    "convnext-layer_wise": (ToyConvNeXt, "layer_wise", "LearningRateDecayOptimizerConstructor",
                            dict(decay_rate=0.8, decay_type="layer_wise", num_layers=6)),
    "beit-layer_wise": (ToyBEiT, "layer_wise", "LearningRateDecayOptimizerConstructor",
                        dict(decay_rate=0.9, decay_type="layer_wise", num_layers=4)),
    "beit-layer_decay": (ToyBEiT, "layer_decay", "LayerDecayOptimizerConstructor",
                         dict(layer_decay_rate=0.9, num_layers=4)),
    "mae-layer_decay": (ToyMAE, "layer_decay", "LayerDecayOptimizerConstructor",
                        dict(layer_decay_rate=0.65, num_layers=4)),
}


@pytest.mark.parametrize("case", sorted(LR_DECAY))
def test_lr_decay_matches_mmseg(case):
    backbone, decay_type, constructor, paramwise_cfg = LR_DECAY[case]
    torch.manual_seed(0)
    model = ToySegmentor(backbone())
    ref = copy.deepcopy(model)
    rate = paramwise_cfg.get("decay_rate", paramwise_cfg.get("layer_decay_rate"))
    cfg = _d2seg_cfg("AdamW", 1e-4, 0.05, ["SOLVER.LR_DECAY.TYPE", decay_type,
                                            "SOLVER.LR_DECAY.NUM_LAYERS",
                                            paramwise_cfg["num_layers"],
                                            "SOLVER.LR_DECAY.RATE", rate])
    opt = build_optimizer(cfg, model)
    ref_opt = _mmseg_optimizer(ref, type="AdamW", lr=1e-4, weight_decay=0.05,
                               constructor=constructor, paramwise_cfg=dict(paramwise_cfg))
    names = [n for n, _ in model.named_parameters()]
    pairs = list(zip(model.parameters(), ref.parameters()))
    _assert_same_settings(pairs, opt, ref_opt, names)
    lrs = {lr for lr, _ in _settings(opt).values()}
    assert len(lrs) >= 4 and max(lrs) == pytest.approx(1e-4)  # decayed; the head at BASE_LR
    _assert_same_step(pairs, opt, ref_opt)


# ---- the poly schedule on groups of different lrs ---------------------------------------------

@pytest.mark.parametrize("lr_config", [
    # SETR: SGD, head lr x10, absolute min_lr 1e-4 (each group ends at min_lr, not 10x)
    dict(policy="poly", power=0.9, min_lr=1e-4, by_epoch=False),
    # SegFormer / ConvNeXt: linear warm-up on the poly schedule, min_lr 0
    dict(policy="poly", power=1.0, min_lr=0.0, by_epoch=False, warmup="linear",
         warmup_iters=10, warmup_ratio=1e-6),
])
def test_poly_schedule_per_group_matches_mmcv(lr_config):
    from mmcv.runner.hooks import HOOKS
    from mmcv.utils import build_from_cfg

    torch.manual_seed(0)
    model = ToySegmentor(ToyBEiT())
    ref = copy.deepcopy(model)
    custom_keys = {"head": dict(lr_mult=10.0), "layers.1": dict(lr_mult=0.5)}
    opts = _paramwise_opts(dict(custom_keys=custom_keys)) + [
        "SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.POLY_LR_POWER", lr_config["power"],
        "SOLVER.POLY_LR_MIN_LR", lr_config["min_lr"]]
    if "warmup" in lr_config:
        opts += ["SOLVER.WARMUP_ITERS", lr_config["warmup_iters"], "SOLVER.WARMUP_FACTOR",
                 lr_config["warmup_ratio"], "SOLVER.WARMUP_METHOD", "linear"]
    cfg = _d2seg_cfg("SGD", 0.01, 5e-4, opts)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    ref_opt = _mmseg_optimizer(ref, type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4,
                               paramwise_cfg=dict(custom_keys=custom_keys))
    hook_cfg = dict(lr_config, type="PolyLrUpdaterHook")
    hook_cfg.pop("policy")
    hook = build_from_cfg(hook_cfg, HOOKS)
    runner = types.SimpleNamespace(optimizer=ref_opt, iter=0, max_iters=100, epoch=0)
    hook.before_run(runner)
    pairs = list(zip(model.parameters(), ref.parameters()))
    names = [n for n, _ in model.named_parameters()]
    it = 0
    for i in (0, 5, 37, 99):
        with warnings.catch_warnings():  # lr_scheduler.step() before optimizer.step()
            warnings.simplefilter("ignore")
            for _ in range(i - it):
                sched.step()
        it = runner.iter = i
        hook.before_train_iter(runner)
        _assert_same_settings(pairs, opt, ref_opt, names)
    assert len({g["lr"] for g in opt.param_groups}) == 3
    _assert_same_step(pairs, opt, ref_opt)


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("opts, match", [
    (["SOLVER.LR_DECAY.TYPE", "depth_wise"], r"SOLVER.LR_DECAY.TYPE='depth_wise'"),
    (["SOLVER.LR_DECAY.TYPE", "stage_wise"], r"NUM_LAYERS=0"),
    (["SOLVER.LR_DECAY.TYPE", "stage_wise", "SOLVER.LR_DECAY.NUM_LAYERS", 4],
     r"'stage_wise' is not defined for the backbone ToyBEiT"),
    (["SOLVER.LR_DECAY.TYPE", "layer_wise", "SOLVER.LR_DECAY.NUM_LAYERS", 4,
      "SOLVER.PARAMWISE.NORM_DECAY_MULT", 0.0], r"ignores SOLVER.PARAMWISE"),
    (["SOLVER.PARAMWISE.CUSTOM_KEYS", [["head", 10.0]]], r"CUSTOM_KEYS\[0\]=\['head', 10.0\]"),
    (["SOLVER.PARAMWISE.CUSTOM_KEYS", [["norm", 1.0, 0.0], ["head", "ten", 1.0]]],
     r"CUSTOM_KEYS\[1\] lr_mult='ten'"),
    (["SOLVER.PARAMWISE.CUSTOM_KEYS", [["norm", 1.0, 0.0], ["norm", 1.0, 1.0]]],
     r"CUSTOM_KEYS\[1\]: substring 'norm' is given twice"),
    (["SOLVER.PARAMWISE.BIAS_DECAY_MULT", -1.0], r"BIAS_DECAY_MULT=-1.0"),
])
def test_bad_settings_name_the_key(opts, match):
    model = ToySegmentor(ToyBEiT())
    with pytest.raises(ValueError, match=match):
        build_optimizer(_d2seg_cfg("AdamW", 1e-4, 0.05, opts), model)


def test_defaults_keep_detectron2_groups():
    """Without SOLVER.PARAMWISE / LR_DECAY, Detectron2's keys still set the groups."""
    model = ToySegmentor(ToyBEiT())
    opt = build_optimizer(_d2seg_cfg("AdamW", 1e-4, 0.05, ["SOLVER.WEIGHT_DECAY_NORM", 0.0]),
                          model)
    norm_wd = {_settings(opt)[p][1] for m in model.modules() if isinstance(m, nn.LayerNorm)
               for p in m.parameters()}
    assert norm_wd == {0.0}
