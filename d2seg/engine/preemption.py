"""Stop training on a signal without losing work: finish the step, save a checkpoint, exit.

SLURM signals a job before its time limit (``#SBATCH --signal=USR2@120``) and before preempting it
(``SIGTERM``). Killed there, a run would lose everything since its last periodic checkpoint; with
:class:`PreemptionCheckpoint` it saves ``model_<iter>.pth`` (and ``last_checkpoint``) at the step it
reached, and ``--resume`` continues from that step (tools/train_net.py, tools/launch_slurm.py).
"""
import logging
import signal

import torch
import torch.distributed as dist

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["PreemptionCheckpoint", "Preempted", "STOP_SIGNALS"]

logger = logging.getLogger(__name__)

# SLURM's time-limit warning as submitit asks for it, and SLURM's (and `kill`'s) preemption signal
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class Preempted(BaseException):
    """Raised out of ``trainer.train()`` once the checkpoint is saved. A requested stop, not an
    error (as KeyboardInterrupt): Detectron2's loop logs an ``Exception`` as a crash."""

    def __init__(self, signum: int, iteration: int, checkpoint: str):
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        super().__init__(
            f"training stopped by {signal.Signals(signum).name} after iteration {iteration}: "
            f"saved {checkpoint} (--resume continues at iteration {iteration + 1})"
        )


class PreemptionCheckpoint(HookBase):
    """On one of ``signals``, ends training after the current step with a checkpoint of it.

    The signal handlers are installed when the hook is made (so that a signal during start-up
    is not fatal either) and restored after training. The handler only sets a flag; the step in
    progress finishes. Ranks may get the signal at different steps, so they agree first: each
    step's signal number is all-reduced (MAX) asynchronously over a gloo group and read a step
    later (no GPU sync, no wait on the training's critical path); all ranks then stop after the same
    step, the main process saves through the trainer's checkpointer, all wait for it, and
    :class:`Preempted` ends ``train()``. A signal during the last step lets training finish
    (``model_final``).
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.signum = None  # the first stop signal received
        self._previous = {s: signal.signal(s, self._request_stop) for s in self.signals}
        self._group = self._flag = self._work = None

    def _request_stop(self, signum, frame):
        if self.signum is None:  # only a flag here: this interrupts arbitrary code
            self.signum = signum

    def before_train(self):
        if comm.get_world_size() > 1:
            self._group = dist.new_group(backend="gloo")

    def _agreed_signal(self) -> int:
        """The stop signal all ranks have agreed on (0: none yet)."""
        if self._group is None:
            return self.signum or 0
        agreed = 0
        if self._work is not None:
            self._work.wait()  # launched a step ago: done by now
            agreed = int(self._flag.item())
        self._flag = torch.tensor([self.signum or 0])  # a rank without the signal learns it here
        self._work = None if agreed else dist.all_reduce(
            self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return agreed

    def after_step(self):
        signum = self._agreed_signal()
        if not signum or self.trainer.iter + 1 >= self.trainer.max_iter:
            return
        it = self.trainer.iter
        name = f"model_{it:07d}"
        # what PeriodicCheckpointer saves: resume_or_load continues at iteration + 1
        self.trainer.checkpointer.save(name, iteration=it)
        comm.synchronize()  # no rank leaves before the main process has written it
        raise Preempted(signum, it, name + ".pth")

    def after_train(self):
        if self._work is not None and self.trainer.iter >= self.trainer.max_iter:
            self._work.wait()  # every rank launched it: leave no collective in flight
        self._work = None
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
