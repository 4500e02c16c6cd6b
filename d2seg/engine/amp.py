"""Mixed-precision training step on any device, in float16 or bfloat16.

Detectron2's ``AMPTrainer`` asserts CUDA and always autocasts through ``torch.cuda.amp``;
``SegAMPTrainer`` is the same step with ``torch.autocast(device_type)`` and ``SOLVER.AMP.DTYPE``
(the dtype inference autocasts in too: d2seg.modeling.speed.amp_dtype_from_config).
bfloat16 has float32's exponent range, so it needs no loss scaling: its grad scaler is disabled.
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
                 **kwargs):
        """``loss_scale``: 0 = dynamic (torch's GradScaler); > 0 = static (mmcv's
        ``Fp16OptimizerHook(loss_scale=...)``: reset to it after every step)."""
        if loss_scale < 0:
            raise ValueError(f"SOLVER.AMP.LOSS_SCALE={loss_scale}: 0 (dynamic) or > 0 (static)")
        device = _model_device(model)
        if "grad_scaler" not in kwargs:
            # loss scaling only for float16 (bfloat16 does not underflow like float16)
            kwargs["grad_scaler"] = torch.amp.GradScaler(
                device.type, init_scale=loss_scale or 2.0 ** 16,
                enabled=precision == torch.float16
            )
        super().__init__(model, data_loader, optimizer, precision=precision, **kwargs)
        self.device_type = device.type
        self.static_loss_scale = float(loss_scale) or None

    def run_step(self):
        assert self.model.training, "[SegAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(device_type=self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        if self.log_grad_scaler:  # as Detectron2's AMPTrainer
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time,
                                            iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update(self.static_loss_scale)  # None: the dynamic rule


def build_step_trainer(cfg, model, data_loader, optimizer):
    """``SegAMPTrainer`` (SOLVER.AMP.ENABLED, dtype SOLVER.AMP.DTYPE) or ``SimpleTrainer``."""
    amp_dtype = amp_dtype_from_config(cfg)
    if amp_dtype:
        return SegAMPTrainer(model, data_loader, optimizer, precision=parse_dtype(amp_dtype),
                             loss_scale=cfg.SOLVER.AMP.LOSS_SCALE)
    return SimpleTrainer(model, data_loader, optimizer)
