"""d2seg's optimisers and schedules against mmcv's, as mmseg's configs set them up.

For each config below, the same small network (convs, BN, biases: every parameter group) is
trained by both libraries from the same weights with the same gradients: mmcv's
``build_optimizer`` + ``LrUpdaterHook`` + ``OptimizerHook`` (its ``grad_clip``) from mmseg's own
config, and d2seg's ``Trainer.build_optimizer`` / ``build_lr_scheduler`` from the generated yaml.
Steps are taken at iterations that straddle the warm-up's end and the schedule's milestones;
the learning rate is compared at every iteration of the schedule.
"""
import copy
import types
import warnings

import pytest
import torch
from torch import nn

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.engine import Trainer

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

CONFIGS = [
    # AdamW, whole-model gradient clipping (max_norm 1), step schedule with a linear warm-up
    "pspnet/pspnet_r50-d8_rsb-pretrain_512x1024_adamw_80k_cityscapes",
    "pspnet/pspnet_r50-d32_rsb-pretrain_512x1024_adamw_80k_cityscapes",
    # SGD + poly, the other 387
    "pspnet/pspnet_r50-d8_512x1024_40k_cityscapes",
]


def _net():
    """Conv (no bias: before BN its gradient is zero in theory, i.e. rounding noise, which Adam
    scales up to steps of size lr) + BN + ReLU + conv with bias."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 4, 1))


def _mmcv_side(model, mm_cfg):
    from mmcv.runner import build_optimizer
    from mmcv.runner.hooks import HOOKS, OptimizerHook
    from mmcv.utils import build_from_cfg

    optimizer = build_optimizer(model, mm_cfg.optimizer)
    lr_cfg = dict(mm_cfg.lr_config)
    lr_cfg["type"] = lr_cfg.pop("policy").title() + "LrUpdaterHook"
    lr_hook = build_from_cfg(lr_cfg, HOOKS)
    logged = []  # OptimizerHook logs the clipped-from norm
    runner = types.SimpleNamespace(optimizer=optimizer, model=model, iter=0,
                                   max_iters=mm_cfg.runner.max_iters, epoch=0,
                                   log_buffer=types.SimpleNamespace(
                                       update=lambda d, n: logged.append(d)))
    lr_hook.before_run(runner)
    hook = OptimizerHook(**mm_cfg.optimizer_config)

    def lr_at(i):
        runner.iter = i
        lr_hook.before_train_iter(runner)
        return optimizer.param_groups[0]["lr"]

    def step_at(i, loss):
        lr_at(i)
        runner.outputs = {"loss": loss, "num_samples": 2}
        hook.after_train_iter(runner)  # zero_grad, backward, clip, step

    return lr_at, step_at, logged


def _d2seg_side(model, cfg):
    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    state = {"iter": 0}

    def lr_at(i):
        assert i >= state["iter"]
        with warnings.catch_warnings():  # lr_scheduler.step() before optimizer.step()
            warnings.simplefilter("ignore")
            while state["iter"] < i:
                scheduler.step()
                state["iter"] += 1
        return optimizer.param_groups[0]["lr"]

    def step_at(i, loss):
        lr_at(i)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return lr_at, step_at, optimizer


@pytest.mark.parametrize("stem", CONFIGS)
def test_optimizer_and_schedule_match_mmcv(stem):
    mm_cfg = mmseg_peer.mmseg_config(stem)
    cfg = get_d2seg_cfg(REPO_CONFIGS / f"{stem}.yaml")
    assert cfg.SOLVER.MAX_ITER == mm_cfg.runner.max_iters
    ref, net = _net(), _net()
    ref_lr, ref_step, _ = _mmcv_side(ref, mm_cfg)
    lr_at, step_at, optimizer = _d2seg_side(net, cfg)
    adamw = mm_cfg.optimizer.type == "AdamW"
    assert type(optimizer).__mro__[1 if cfg.SOLVER.CLIP_GRADIENTS.ENABLED else 0] is (
        torch.optim.AdamW if adamw else torch.optim.SGD)

    # the learning rate at every iteration (every 7th, and around each boundary)
    warm = mm_cfg.lr_config.get("warmup_iters", 0) if mm_cfg.lr_config.get("warmup") else 0
    edges = [warm] + list(mm_cfg.lr_config.get("step", []))
    iters = sorted(set(range(0, cfg.SOLVER.MAX_ITER, 7)) |
                   {e + d for e in edges for d in (-1, 0, 1)} - {-1})
    for i in iters:
        assert lr_at(i) == pytest.approx(ref_lr(i), rel=1e-9, abs=1e-15), i
    # the schedule really moves: warm-up from warmup_ratio, then each milestone divides by 10
    if adamw:
        base = mm_cfg.optimizer.lr
        assert ref_lr(0) == pytest.approx(base * 1e-3)
        assert ref_lr(warm) == pytest.approx(base)
        assert ref_lr(edges[1]) == pytest.approx(base * 0.1)
        assert ref_lr(edges[2]) == pytest.approx(base * 0.01)

    # a few steps, from the same weights with the same data (fresh schedulers)
    ref, net = _net(), _net()
    ref_lr, ref_step, logged = _mmcv_side(ref, mm_cfg)
    lr_at, step_at, _ = _d2seg_side(net, cfg)
    g = torch.Generator().manual_seed(1)
    clipped = False
    for i in sorted({0, 1, warm - 1, warm, warm + 1} - {-1}):
        x = torch.randn(2, 3, 8, 8, generator=g) * 4
        target = torch.randn(2, 4, 8, 8, generator=g)
        ref_loss = ((ref(x) - target) ** 2).mean() * 50  # gradients of norm >> max_norm
        loss = ((net(x) - target) ** 2).mean() * 50
        ref_step(i, ref_loss)
        step_at(i, loss)
        if adamw:  # mmcv clipped (it logs the norm before); so must d2seg: now max_norm
            total = torch.linalg.vector_norm(torch.stack(
                [torch.linalg.vector_norm(p.grad) for p in net.parameters()]))
            max_norm = mm_cfg.optimizer_config.grad_clip.max_norm
            if logged[-1]["grad_norm"] > max_norm:
                clipped = True
                assert total == pytest.approx(max_norm, rel=1e-5)
        for (k, p), (_, q) in zip(net.state_dict().items(), ref.state_dict().items()):
            assert torch.allclose(p, q, rtol=0, atol=1e-6 * max(1.0, q.abs().max().item())), \
                (i, k, (p - q).abs().max())
    assert clipped or not adamw, "the test's gradients never reached the clipping norm"


def test_per_parameter_clip_is_not_full_model():
    """Detectron2's "norm" clips each tensor on its own; "full_model" the norm of them all."""
    opts = ["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 1.0,
            "SOLVER.BASE_LR", 0.0, "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.WEIGHT_DECAY_NORM", 0.0]
    grads = {}
    for kind in ("norm", "full_model"):
        net = _net()
        cfg = get_d2seg_cfg(None, opts + ["SOLVER.CLIP_GRADIENTS.CLIP_TYPE", kind])
        optimizer = Trainer.build_optimizer(cfg, net)
        for p in net.parameters():
            p.grad = torch.full_like(p, 3.0)
        optimizer.step()
        grads[kind] = [copy.deepcopy(p.grad) for p in net.parameters()]
    per_tensor = [torch.linalg.vector_norm(g).item() for g in grads["norm"]]
    assert per_tensor == pytest.approx([1.0] * len(per_tensor), rel=1e-5)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                  for g in grads["full_model"]]))
    assert total.item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("key,value,message", [
    ("SOLVER.OPTIMIZER", "Lamb", "SOLVER.OPTIMIZER='Lamb'"),
    ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "global", "CLIP_TYPE='global'"),
])
def test_bad_optimizer_keys_name_key_and_value(key, value, message):
    opts = [key, value] + (["SOLVER.CLIP_GRADIENTS.ENABLED", True] if "CLIP" in key else [])
    cfg = get_d2seg_cfg(None, opts)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Trainer.build_optimizer(cfg, _net())
