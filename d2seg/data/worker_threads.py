"""Thread counts of data-loading processes, as mmseg's ``setup_multi_processes``.

Each DataLoader worker of each rank would otherwise start cv2's and OpenMP's thread pools on all
cores: 8 ranks x 4 workers x N cores threads on N cores. A worker runs one sample at a time, so
it gets one thread: ``cv2.setNumThreads(0)`` (cv2 runs its functions on the calling thread) and
one torch/OpenMP thread (torch's DataLoader sets that too; done here again so that it also holds
for loaders built outside torch's worker loop).
"""
import os

import cv2
import torch
import torch.utils.data as torchdata

__all__ = ["limit_worker_threads", "limit_threads_in_worker", "rank_thread_count"]

_limited = False


def limit_worker_threads() -> None:
    """One thread for cv2, OpenMP and torch in this process."""
    global _limited
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # for libraries that read it on first use
    _limited = True


def limit_threads_in_worker() -> None:
    """:func:`limit_worker_threads` once, when called inside a DataLoader worker (a no-op in the
    main process, where NUM_WORKERS 0 maps samples with the rank's own threads)."""
    if not _limited and torchdata.get_worker_info() is not None:
        limit_worker_threads()


def rank_thread_count(local_world_size: int) -> int:
    """Intra-op threads of one of ``local_world_size`` processes on this machine: the cores
    shared out (``OMP_NUM_THREADS`` when set wins)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, local_world_size))
