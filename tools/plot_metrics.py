#!/usr/bin/env python
"""Plots the loss and mIoU curves of a training run (OUTPUT_DIR/metrics.json) into a PNG.

    python tools/plot_metrics.py output/quickstart [--out curves.png]
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def plot(output_dir, out=None):
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {output_dir} a training OUTPUT_DIR?")
    rows = read_metrics(path)
    losses = [(r["iteration"], r["total_loss"]) for r in rows if "total_loss" in r]
    mious = [(r["iteration"], r["sem_seg/mIoU"]) for r in rows if "sem_seg/mIoU" in r]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    if losses:
        ax1.plot(*zip(*losses), color="tab:blue", label="total loss")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("loss", color="tab:blue")
    ax2 = ax1.twinx()
    if mious:
        ax2.plot(*zip(*mious), "o-", color="tab:red", label="val mIoU")
    ax2.set_ylabel("mIoU (%)", color="tab:red")
    ax1.set_title(os.path.basename(os.path.normpath(output_dir)))
    fig.tight_layout()
    out = out or os.path.join(output_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("output_dir")
    p.add_argument("--out", default=None, help="PNG path (default OUTPUT_DIR/curves.png)")
    a = p.parse_args()
    print("wrote", plot(a.output_dir, a.out))
