"""Mixed-precision training step on any device, in float16 or bfloat16, and gradient
accumulation.

Detectron2's ``AMPTrainer`` asserts CUDA and always autocasts through ``torch.cuda.amp``;
``SegAMPTrainer`` is the same step with ``torch.autocast(device_type)`` and ``SOLVER.AMP.DTYPE``
(the dtype inference autocasts in too: d2seg.modeling.speed.amp_dtype_from_config).
bfloat16 has float32's exponent range, so it needs no loss scaling: its grad scaler is disabled.
With ``precision=None`` it runs in float32 (no autocast, no scaler): the step trainer of float32
configs that accumulate gradients (``SOLVER.ACCUMULATE_ITERS``, mmcv's
``GradientCumulativeOptimizerHook``).
"""
import time

import torch

from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage

from ..modeling.speed import amp_dtype_from_config, parse_dtype

__all__ = ["SegAMPTrainer", "build_step_trainer"]


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless model
        return torch.device("cpu")


class SegAMPTrainer(AMPTrainer):
    """:class:`AMPTrainer` for CPU and GPU; ``precision`` is the autocast dtype."""

    def __init__(self, model, data_loader, optimizer, precision=torch.float16, loss_scale=0.0,
                 accumulate_iters=1, max_iter=None, **kwargs):
        """``loss_scale``: 0 = dynamic (torch's GradScaler); > 0 = static (mmcv's
        ``Fp16OptimizerHook(loss_scale=...)``: reset to it after every step).
        ``accumulate_iters`` > 1: one optimizer step every that many iterations (mmcv's
        ``GradientCumulative(Fp16)OptimizerHook``), which needs ``max_iter`` (the last group)."""
        if loss_scale < 0:
            raise ValueError(f"SOLVER.AMP.LOSS_SCALE={loss_scale}: 0 (dynamic) or > 0 (static)")
        if accumulate_iters < 1 or (accumulate_iters > 1 and not max_iter):
            raise ValueError(f"SOLVER.ACCUMULATE_ITERS={accumulate_iters}: >= 1, and > 1 needs "
                             "SOLVER.MAX_ITER")
        self.accumulate_iters, self.max_iter = int(accumulate_iters), max_iter
        device = _model_device(model)
        if "grad_scaler" not in kwargs:
            # loss scaling only for float16 (bfloat16 does not underflow like float16)
            kwargs["grad_scaler"] = torch.amp.GradScaler(
                device.type, init_scale=loss_scale or 2.0 ** 16,
                enabled=precision == torch.float16
            )
        self.autocast = precision is not None  # None: float32
        super().__init__(model, data_loader, optimizer, precision=precision or torch.float32,
                         **kwargs)
        self.device_type = device.type
        self.static_loss_scale = float(loss_scale) or None

    def _loss_factor(self) -> int:
        """What this iteration's loss is divided by: the group size (mmcv's loss_factor)."""
        n = self.accumulate_iters
        if n == 1:
            return 1
        divisible = self.max_iter // n * n
        return n if self.iter < divisible else self.max_iter - divisible

    def _steps_now(self) -> bool:
        """Whether this iteration ends a group (mmcv: every_n_iters or is_last_iter)."""
        n = self.accumulate_iters
        return n == 1 or (self.iter + 1) % n == 0 or self.iter + 1 >= self.max_iter

    def run_step(self):
        assert self.model.training, "[SegAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        # gradients are cleared at each step's first iteration (with accumulation: after the
        # previous group's step, as mmcv; a run resumed inside a group starts a fresh sum)
        clear = self.accumulate_iters == 1 or self.iter % self.accumulate_iters == 0
        if clear and self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(device_type=self.device_type, dtype=self.precision,
                            enabled=self.autocast):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if clear and not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        factor = self._loss_factor()
        self.grad_scaler.scale(losses / factor if factor != 1 else losses).backward()
        if self.log_grad_scaler:  # as Detectron2's AMPTrainer
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time,
                                            iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        if self._steps_now():
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update(self.static_loss_scale)  # None: the dynamic rule


def build_step_trainer(cfg, model, data_loader, optimizer):
    """``SegAMPTrainer`` (SOLVER.AMP.ENABLED, dtype SOLVER.AMP.DTYPE; or float32 with
    SOLVER.ACCUMULATE_ITERS > 1) or Detectron2's ``SimpleTrainer``."""
    amp_dtype = amp_dtype_from_config(cfg)
    accumulate = cfg.SOLVER.ACCUMULATE_ITERS
    if amp_dtype or accumulate != 1:
        return SegAMPTrainer(model, data_loader, optimizer,
                             precision=parse_dtype(amp_dtype) if amp_dtype else None,
                             loss_scale=cfg.SOLVER.AMP.LOSS_SCALE, accumulate_iters=accumulate,
                             max_iter=cfg.SOLVER.MAX_ITER)
    return SimpleTrainer(model, data_loader, optimizer)
