"""SOLVER.ACCUMULATE_ITERS against mmcv's GradientCumulativeOptimizerHook (BEiT-L's recipe, in
float16 there): the same parameters after every iteration of a run whose length is not a
multiple of the group (the last group has its own loss factor), with momentum and weight decay
so that a step on the wrong iteration, or a loss divided by the wrong factor, shows."""
import copy
import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.utils.events import EventStorage

from common import tiny_cfg
from d2seg.engine.amp import SegAMPTrainer, build_step_trainer

pytest.importorskip("mmcv")


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, batch):
        x, y = batch
        return {"loss_ce": F.cross_entropy(self.lin(x), y)}


def _batches(n):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(3, 6, generator=g), torch.randint(0, 4, (3,), generator=g))
            for _ in range(n)]


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)


@pytest.mark.parametrize("n, max_iter", [(2, 5), (3, 7), (1, 3)])
def test_accumulation_matches_mmcv_hook(n, max_iter):
    from mmcv.runner.hooks import GradientCumulativeOptimizerHook

    torch.manual_seed(0)
    ref = Toy()
    model = copy.deepcopy(ref)
    batches = _batches(max_iter)
    ref_opt = _sgd(ref)
    hook = GradientCumulativeOptimizerHook(cumulative_iters=n)
    trainer = SegAMPTrainer(model, iter(batches), _sgd(model), precision=None,
                            accumulate_iters=n, max_iter=max_iter)
    assert not trainer.grad_scaler.is_enabled()
    with EventStorage() as storage:
        trainer.storage = storage
        for it in range(max_iter):
            runner = SimpleNamespace(iter=it, max_iters=max_iter, _max_iters=max_iter,
                                     model=ref, optimizer=ref_opt, logger=logging.getLogger(),
                                     outputs={"loss": ref(batches[it])["loss_ce"]})
            hook.after_train_iter(runner)
            trainer.iter = storage.iter = it
            trainer.run_step()
            stepped = it + 1 >= n or it + 1 == max_iter  # the optimizer has state after a step
            assert bool(trainer.optimizer.state.get(model.lin.weight)) == stepped
            for (name, a), b in zip(ref.named_parameters(), model.parameters()):
                torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=f"{name}, iter {it}")
            # the logged loss is the iteration's own, not divided by the group size
            assert storage.history("total_loss").latest() == pytest.approx(
                runner.outputs["loss"].item(), rel=1e-6)
    # the run moved the weights (a test whose trainers never step would pass the checks above)
    assert not torch.equal(model.lin.weight, Toy().lin.weight)


def test_config_builds_the_accumulating_trainer():
    cfg = tiny_cfg(opts=["SOLVER.ACCUMULATE_ITERS", 2, "SOLVER.MAX_ITER", 9])
    model = Toy()
    trainer = build_step_trainer(cfg, model, iter(_batches(1)), _sgd(model))
    assert isinstance(trainer, SegAMPTrainer)
    assert (trainer.accumulate_iters, trainer.max_iter, trainer.autocast) == (2, 9, False)
    cfg.SOLVER.AMP.ENABLED = True  # BEiT-L: float16 with the static scale, accumulating
    cfg.SOLVER.AMP.LOSS_SCALE = 512.0
    trainer = build_step_trainer(cfg, model, iter(_batches(1)), _sgd(model))
    assert (trainer.accumulate_iters, trainer.precision, trainer.static_loss_scale) == \
        (2, torch.float16, 512.0)
    cfg.SOLVER.ACCUMULATE_ITERS = 0
    with pytest.raises(ValueError, match="SOLVER.ACCUMULATE_ITERS=0"):
        build_step_trainer(cfg, model, iter(_batches(1)), _sgd(model))


def test_float16_accumulation_steps_once_per_group():
    """float16 on the CPU, static scale 512: gradients sum over the group, unscaled once."""
    torch.manual_seed(0)
    model = Toy()
    before = copy.deepcopy(model.state_dict())
    opt = _sgd(model)
    trainer = SegAMPTrainer(model, iter(_batches(4)), opt, precision=torch.float16,
                            loss_scale=512.0, accumulate_iters=2, max_iter=4)
    with EventStorage() as storage:
        trainer.storage = storage
        trainer.iter = storage.iter = 0
        trainer.run_step()
        assert torch.equal(model.lin.weight, before["lin.weight"])  # not yet
        assert model.lin.weight.grad is not None and model.lin.weight.grad.abs().sum() > 0
        trainer.iter = storage.iter = 1
        trainer.run_step()
    assert not torch.equal(model.lin.weight, before["lin.weight"])
    assert trainer.grad_scaler.get_scale() == 512.0
