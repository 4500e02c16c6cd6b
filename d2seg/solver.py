"""mmseg's optimisers and learning-rate schedules on Detectron2's solver classes."""
import torch
from detectron2.solver import build_lr_scheduler as build_d2_lr_scheduler
from detectron2.solver import build_optimizer as build_d2_optimizer
from detectron2.solver.build import (
    _generate_optimizer_class_with_gradient_clipping,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
)
from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import ParamScheduler

from .solver_paramwise import paramwise_groups

__all__ = ["MmcvWarmup", "PolyLR", "PolyParamScheduler", "build_lr_scheduler", "build_optimizer"]

OPTIMIZERS = ("SGD", "AdamW", "Adam")
CLIP_TYPES = ("value", "norm", "full_model")


class PolyParamScheduler(ParamScheduler):
    """``(1 - min_ratio) * (1 - where) ** power + min_ratio``: mmcv's PolyLrUpdaterHook,
    ``lr = (base_lr - min_lr) * (1 - iter / max_iters) ** power + min_lr``, as a multiplier."""

    def __init__(self, power: float, min_ratio: float):
        self.power = power
        self.min_ratio = min_ratio

    def __call__(self, where: float) -> float:
        return (1.0 - self.min_ratio) * (1.0 - where) ** self.power + self.min_ratio


class MmcvWarmup(ParamScheduler):
    """mmcv's warm-up factor on the schedule's lr: ``1 - (1 - it / warmup_iters) * (1 -
    warmup_ratio)`` ("linear") or ``warmup_ratio`` ("constant"), 1 after ``length``."""

    def __init__(self, ratio: float, length: float, method: str):
        if length > 0 and method not in ("linear", "constant"):
            raise ValueError(f"SOLVER.WARMUP_METHOD={method!r}: WarmupPolyLR has 'linear' and "
                             "'constant'")
        self.ratio, self.length, self.method = ratio, length, method

    def __call__(self, where: float) -> float:
        if where >= self.length:
            return 1.0
        if self.method == "constant":
            return self.ratio
        return 1.0 - (1.0 - where / self.length) * (1.0 - self.ratio)


class PolyLR(LRMultiplier):
    """mmcv's PolyLrUpdaterHook on each parameter group: ``lr = warmup(it) * ((initial_lr -
    min_lr) * (1 - it / max_iter) ** power + min_lr)``. ``min_lr`` is absolute, the same for
    every group (a head at 10x BASE_LR or a layer-decayed group also ends at min_lr), so the
    groups' lrs keep their ratios only when it is 0. The warm-up multiplies that lr, as mmcv's
    ``1 - (1 - it / warmup_iters) * (1 - warmup_ratio)`` ("linear") or ``warmup_ratio``
    ("constant") does (Detectron2's warm-up instead ramps to the schedule's value at its end)."""

    def __init__(self, optimizer, *, power: float, min_lr: float, warmup: ParamScheduler,
                 max_iter: int, last_iter: int = -1):
        self._poly = PolyParamScheduler(power, 0.0)
        self._min_lr = min_lr
        super().__init__(optimizer, multiplier=warmup, max_iter=max_iter, last_iter=last_iter)

    def get_lr(self):
        where = self.last_epoch / self._max_iter
        warm, coeff = self._multiplier(where), self._poly(where)
        return [warm * ((base - self._min_lr) * coeff + self._min_lr) for base in self.base_lrs]


def build_lr_scheduler(cfg, optimizer):
    """``WarmupPolyLR`` (mmseg's schedule: :class:`PolyLR`, with SOLVER.WARMUP_* as mmcv's
    warm-up); any other SOLVER.LR_SCHEDULER_NAME goes to Detectron2's builder
    (``WarmupMultiStepLR`` with a linear warm-up is mmcv's ``policy='step'`` with
    ``warmup='linear'``: the same factors)."""
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return build_d2_lr_scheduler(cfg, optimizer)
    warmup = MmcvWarmup(cfg.SOLVER.WARMUP_FACTOR,
                        max(cfg.SOLVER.WARMUP_ITERS, 0) / cfg.SOLVER.MAX_ITER,
                        cfg.SOLVER.WARMUP_METHOD)
    return PolyLR(optimizer, power=cfg.SOLVER.POLY_LR_POWER, min_lr=cfg.SOLVER.POLY_LR_MIN_LR,
                  warmup=warmup, max_iter=cfg.SOLVER.MAX_ITER)


def _clip_full_model(clip):
    """mmcv's ``OptimizerHook(grad_clip=dict(max_norm, norm_type))``: one norm over every
    gradient of the model (Detectron2's "norm" clips each parameter on its own)."""
    max_norm, norm_type = clip.CLIP_VALUE, clip.NORM_TYPE

    def clip_all(params):
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm,
                                       norm_type)

    return clip_all


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER: "SGD" is Detectron2's ``build_optimizer``; "AdamW" (mmseg's
    rsb-pretrain configs) and "Adam" (CGNet's) take the same parameter groups
    (SOLVER.WEIGHT_DECAY_NORM/_BIAS,
    BIAS_LR_FACTOR) and SOLVER.BETAS / EPS. SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model" clips
    the norm of all gradients together, as mmcv's OptimizerHook; under AMP the GradScaler
    unscales the gradients before ``step`` clips them. SOLVER.PARAMWISE (mmcv's
    ``paramwise_cfg``) or SOLVER.LR_DECAY (mmseg's layer-wise lr decay) replace Detectron2's
    groups with mmcv's (d2seg/solver_paramwise.py)."""
    # case-insensitive: Mask2Former-style projects spell it "ADAMW"
    name = {n.upper(): n for n in OPTIMIZERS}.get(str(cfg.SOLVER.OPTIMIZER).upper())
    if name is None:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: d2seg builds one of {OPTIMIZERS}")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE not in CLIP_TYPES:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r}: one of {CLIP_TYPES}")
    full_model = clip.ENABLED and clip.CLIP_TYPE == "full_model"
    # mmcv's paramwise_cfg / mmseg's layer-wise lr decay (d2seg/solver_paramwise.py), if set
    params = paramwise_groups(cfg, model)
    if name == "SGD" and not full_model and params is None:
        return build_d2_optimizer(cfg, model)
    if params is None:
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
    if name == "SGD":
        cls, args = torch.optim.SGD, dict(momentum=cfg.SOLVER.MOMENTUM,
                                          nesterov=cfg.SOLVER.NESTEROV)
    else:  # "Adam" (mmseg's CGNet): torch's Adam, weight decay as an L2 term, as mmcv builds it
        cls = torch.optim.AdamW if name == "AdamW" else torch.optim.Adam
        args = dict(betas=tuple(cfg.SOLVER.BETAS), eps=cfg.SOLVER.EPS)
    if full_model:
        cls = _generate_optimizer_class_with_gradient_clipping(
            cls, global_clipper=_clip_full_model(clip))
    else:
        cls = maybe_add_gradient_clipping(cfg, cls)
    return cls(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, foreach=True,
               **args)
