"""mmseg's poly learning-rate schedule on Detectron2's scheduler classes."""
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver.lr_scheduler import LRMultiplier, WarmupParamScheduler
from fvcore.common.param_scheduler import ParamScheduler

__all__ = ["PolyParamScheduler", "build_lr_scheduler"]


class PolyParamScheduler(ParamScheduler):
    """``(1 - min_ratio) * (1 - where) ** power + min_ratio``: mmcv's PolyLrUpdaterHook,
    ``lr = (base_lr - min_lr) * (1 - iter / max_iters) ** power + min_lr``, as a multiplier."""

    def __init__(self, power: float, min_ratio: float):
        self.power = power
        self.min_ratio = min_ratio

    def __call__(self, where: float) -> float:
        return (1.0 - self.min_ratio) * (1.0 - where) ** self.power + self.min_ratio


def build_lr_scheduler(cfg, optimizer):
    """``WarmupPolyLR`` (mmseg's schedule, with Detectron2's optional warm-up); any other
    SOLVER.LR_SCHEDULER_NAME goes to Detectron2's builder."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_d2_lr_scheduler(cfg, optimizer)
    sched = PolyParamScheduler(cfg.SOLVER.POLY_LR_POWER, cfg.SOLVER.POLY_LR_MIN_LR / cfg.SOLVER.BASE_LR)
    if cfg.SOLVER.WARMUP_ITERS > 0:
        sched = WarmupParamScheduler(
            sched,
            cfg.SOLVER.WARMUP_FACTOR,
            min(cfg.SOLVER.WARMUP_ITERS / cfg.SOLVER.MAX_ITER, 1.0),
            cfg.SOLVER.WARMUP_METHOD,
        )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
