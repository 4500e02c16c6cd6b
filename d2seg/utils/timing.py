"""Timing several engines (PyTorch, ONNX Runtime sessions) against each other in one process."""
import time
from typing import Callable, Dict, List

__all__ = ["interleaved_blocks"]


def interleaved_blocks(fns: Dict[str, Callable[[], object]], *, rounds: int, block: int = 5,
                       settle: int = 3) -> Dict[str, List[float]]:
    """Seconds of each timed call of each callable. Every round runs each callable in a block:
    ``settle`` untimed calls, then ``block`` timed ones; the order of the blocks alternates
    (A-B then B-A) so that every engine sees the same machine.

    Blocks, not one call each in turn: after a run, ONNX Runtime's (and OpenMP's) worker threads
    spin for a while, and on a small machine they take the cores from whichever engine runs next
    (on 2 cores, Fast-SCNN's ORT fp32 file took 13-24 ms a run alternating with its INT8 file,
    9 ms in blocks or alone)."""
    if rounds < 1 or block < 1 or settle < 0:
        raise ValueError(f"rounds {rounds}, block {block}, settle {settle}: need rounds >= 1, "
                         "block >= 1, settle >= 0")
    names = list(fns)
    times: Dict[str, List[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            for _ in range(settle):
                fns[k]()
            for _ in range(block):
                start = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - start)
    return times
