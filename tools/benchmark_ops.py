#!/usr/bin/env python
"""Single-op timings behind docs/benchmark.md's design notes (CPU, fp32).

    python tools/benchmark_ops.py --op pointwise   # 1x1 conv: oneDNN F.conv2d vs d2seg's GEMM
    python tools/benchmark_ops.py --op dilated     # ASPP-sized dilated 3x3 conv, fwd + bwd

``pointwise``: batch 1, inference (no grad), the R-50-D8 bottleneck sizes. ``dilated``: 2 x 2048
x 64 x 128 -> 512 channels at dilation 12 / 24 / 36, forward + backward: the row-split convs
through autograd against d2seg's ``tap_conv3x3``. Each figure is the mean of ``--iters`` calls
after two warm-up calls. Run it under different allocators (e.g. ``MALLOC_MMAP_MAX_=0``) to see
how much of a timing is page faults.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from d2seg.cpu_kernels.pointwise import pointwise_conv2d
from d2seg.cpu_kernels.tap_conv import row_split_conv3x3, tap_conv3x3

POINTWISE = [(1024, 256, 64, 128), (256, 1024, 64, 128), (2048, 512, 64, 128),
             (512, 2048, 64, 128), (256, 64, 128, 256), (64, 256, 128, 256)]
DILATED = dict(n=2, ci=2048, co=512, h=64, w=128, dilations=(12, 24, 36))


def mean_time(fn, iters):
    fn(), fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def pointwise(iters):
    print("| 1x1 conv (in -> out, map) | F.conv2d ms | GEMM ms |\n|---|---|---|")
    with torch.no_grad():
        for ci, co, h, w in POINTWISE:
            x, wt, b = torch.randn(1, ci, h, w), torch.randn(co, ci, 1, 1), torch.randn(co)
            conv = mean_time(lambda: F.conv2d(x, wt, b), iters)
            gemm = mean_time(lambda: pointwise_conv2d(x, wt, b), iters)
            print(f"| {ci} -> {co}, {h} x {w} | {conv * 1e3:.1f} | {gemm * 1e3:.1f} |", flush=True)


def dilated(iters):
    print("| dilation | row-split convs, autograd s | tap_conv3x3 s |\n|---|---|---|")
    s = DILATED
    x = torch.randn(s["n"], s["ci"], s["h"], s["w"], requires_grad=True)
    wt = (torch.randn(s["co"], s["ci"], 3, 3) * 0.01).requires_grad_()
    for d in s["dilations"]:
        cells = []
        for fn in (row_split_conv3x3, tap_conv3x3):
            def step(fn=fn):
                y = fn(x, wt, None, d)
                y.backward(torch.ones_like(y))
            cells.append(mean_time(step, iters))
        print(f"| {d} | {cells[0]:.2f} | {cells[1]:.2f} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", choices=["pointwise", "dilated"], required=True)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    (pointwise if args.op == "pointwise" else dilated)(args.iters)


if __name__ == "__main__":
    main()
