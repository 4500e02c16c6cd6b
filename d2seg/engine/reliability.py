"""Pieces of the Trainer that make runs reproducible, resumable and their failures readable."""
import numpy as np
import torch

from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["IterationSeed", "RecordingLoader", "describe_batch", "explain_step_error"]


class IterationSeed(HookBase):
    """Seeds torch's RNG (dropout, ...) from ``(seed, iteration, rank)`` before every step: a run
    resumed at iteration k draws what an uninterrupted run draws at k."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def before_step(self):
        s = np.random.SeedSequence([self.seed % 2**32, self.trainer.iter, comm.get_rank()])
        torch.manual_seed(int(s.generate_state(1)[0]))


class RecordingLoader:
    """Iterates ``loader`` and keeps the last batch, so errors can name its files."""

    def __init__(self, loader):
        self.loader, self.last = loader, None

    def __getattr__(self, name):  # d2seg_sampler, dataset, ...
        return getattr(self.__dict__["loader"], name)

    def __iter__(self):
        for batch in self.loader:
            self.last = batch
            yield batch


def describe_batch(batch) -> str:
    if not batch:
        return "unknown batch"
    shapes = [tuple(d["image"].shape) for d in batch if "image" in d]
    files = [d.get("file_name", "?") for d in batch]
    return f"batch of {len(batch)} images, shapes (C,H,W) {shapes}, files {files}"


def explain_step_error(e: BaseException, iteration: int, batch):
    """A clearer exception for a NaN/inf loss or an out-of-memory in a step, or None."""
    if isinstance(e, FloatingPointError):
        return FloatingPointError(f"{e}\nat iteration {iteration}, {describe_batch(batch)}")
    if isinstance(e, torch.OutOfMemoryError):
        return torch.OutOfMemoryError(
            f"out of memory at iteration {iteration} on a {describe_batch(batch)} (per process): "
            f"reduce SOLVER.IMS_PER_BATCH or INPUT.CROP.SIZE, or enable SOLVER.AMP.\n{e}"
        )
    return None
