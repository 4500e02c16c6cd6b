"""A training data stream that resumes exactly and does not depend on the process layout.

Detectron2's ``TrainingSampler`` restarts its permutation stream when training resumes, and the
augmentations draw from each worker's global ``np.random``, so a resumed run (or one with
another NUM_WORKERS) sees other crops than an uninterrupted one. Here:

- :class:`ResumableTrainingSampler` yields the same infinite stream of permutations as a
  function of ``seed`` only, as ``(dataset index, global position)`` pairs, and can start at any
  position (``start_iter * total batch size``): rank ``r`` of ``w`` takes positions ``r, r+w, ...``,
  so 2 processes of batch B see, per iteration, the samples 1 process of batch 2B sees.
- :class:`PositionSeededDataset` maps a sample with ``np.random``/``random`` seeded from
  ``(seed, position)`` (the global state is restored afterwards), so each sample's augmentation
  depends on its position in the stream only, not on the worker, rank or earlier samples.
"""
import logging
import random
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
import torch.utils.data as torchdata

from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.utils import comm

from .worker_threads import limit_threads_in_worker

__all__ = ["ResumableTrainingSampler", "PositionSeededDataset", "build_resumable_train_loader",
           "position_seed", "set_start_iter"]

logger = logging.getLogger(__name__)


def position_seed(seed: int, position: int) -> int:
    """A 32-bit seed for sample ``position`` of the stream of run ``seed``."""
    return int(np.random.SeedSequence([seed % 2**32, position]).generate_state(1)[0])


class ResumableTrainingSampler(torchdata.Sampler):
    """Infinite shuffled stream (a new permutation per epoch from one generator seeded with
    ``seed``) yielding ``(index, position)``; positions before ``start`` are skipped."""

    def __init__(self, size: int, seed: int, shuffle: bool = True, start: int = 0):
        if size <= 0:
            raise ValueError(f"cannot sample from an empty dataset (size={size})")
        self._size, self._seed, self._shuffle = size, int(seed), shuffle
        self.start = start
        self._rank, self._world_size = comm.get_rank(), comm.get_world_size()

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        epoch_start = (self.start // self._size) * self._size
        for _ in range(self.start // self._size):  # skip whole epochs (keeps g in step)
            if self._shuffle:
                torch.randperm(self._size, generator=g)
        pos = epoch_start
        while True:
            order = (torch.randperm(self._size, generator=g) if self._shuffle
                     else torch.arange(self._size)).tolist()
            for idx in order:
                if pos >= self.start and pos % self._world_size == self._rank:
                    yield idx, pos
                pos += 1


class PositionSeededDataset(torchdata.Dataset):
    """``mapper(dicts[index])`` under RNGs seeded by ``(seed, position)``; a sample the mapper
    rejects (``None``, INPUT.SKIP_BAD_SAMPLES) is replaced by another one chosen by the same
    seed, so skipping is deterministic too."""

    def __init__(self, dicts, mapper, seed: int, max_retries: int = 100):
        self.dicts, self.mapper, self.seed, self.max_retries = dicts, mapper, int(seed), max_retries

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, key):
        limit_threads_in_worker()  # once per worker: cv2 / OpenMP on one thread (mmseg does too)
        idx, pos = key
        s = position_seed(self.seed, pos)
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            np.random.seed(s)
            random.seed(s)
            for attempt in range(self.max_retries):
                out = self.mapper(self.dicts[idx])
                if out is not None:
                    return out
                idx = int(np.random.randint(len(self.dicts)))
            raise RuntimeError(f"{self.max_retries} samples in a row were rejected by the mapper "
                               "(INPUT.SKIP_BAD_SAMPLES): is the whole dataset bad?")
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def data_seed(cfg) -> int:
    """SEED when set (>= 0: runs and resumes are reproducible), else a seed shared by all ranks."""
    return cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()


def build_resumable_train_loader(cfg, mapper, seed: Optional[int] = None):
    """Detectron2's train loader over :class:`PositionSeededDataset` +
    :class:`ResumableTrainingSampler` (no aspect-ratio grouping: it reorders samples, and
    segmentation crops share one size anyway). ``set_start_iter`` moves it to an iteration."""
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN)
    seed = data_seed(cfg) if seed is None else seed
    sampler = ResumableTrainingSampler(len(dicts), seed)
    loader = build_detection_train_loader(
        PositionSeededDataset(dicts, mapper, seed), mapper=None, sampler=sampler,
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH, aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        # page-locked batches: the model's .to(device, non_blocking=True) then overlaps the copy
        pin_memory=cfg.MODEL.DEVICE.startswith("cuda"),
        seed=seed,  # the DataLoader's own generator: creating its iterator must not draw from
    )               # torch's global RNG (that would shift dropout masks after a resume)
    loader.d2seg_sampler = sampler
    loader.d2seg_total_batch = cfg.SOLVER.IMS_PER_BATCH
    return loader


def set_start_iter(loader, start_iter: int) -> None:
    """Makes a loader of :func:`build_resumable_train_loader` (not yet iterated) start with the
    batch of iteration ``start_iter``."""
    sampler = getattr(loader, "d2seg_sampler", None)
    if sampler is None:
        logger.warning("train loader is not resumable: the data order restarts from the beginning")
        return
    sampler.start = start_iter * loader.d2seg_total_batch
