#!/usr/bin/env python
"""Speed and memory of a d2seg config: inference, training step or data loading.

    python tools/benchmark.py --config-file configs/pspnet/pspnet_r50-d8_512x1024_40k_cityscapes.yaml
    python tools/benchmark.py --config-file CFG --task train --batch-size 2 --num-iter 20
    python tools/benchmark.py --config-file CFG --task data --num-iter 100
    python tools/benchmark.py --config-file CFG --winograd F4 --gemm-1x1 --fused-attention \
        --fold-projections  # CPU
    python tools/benchmark.py --config-file CFG --amp --compile MODEL.DEVICE cuda
    python tools/benchmark.py --all configs/pspnet --task inference --num-iter 20 > table.md
    python tools/benchmark.py --config-file CFG --json            # one JSON object on stdout

- ``inference`` (as MMSegmentation's ``tools/benchmark.py``): the time of the network forward
  and the post-processing (resize of the logits to the original size, argmax, copy to the
  host), data loading excluded, averaged over ``--num-iter`` images after ``--warmup``; the
  images are random, of ``--input-size`` (default 512 x 1024), one at a time, through the
  config's test mode (whole / slide). ``--fuse`` (default: MODEL.SPEED.FUSE_BN) folds BN into
  the convs first (d2seg.modeling.speed.optimize_for_inference).
- ``train``: images/s of Detectron2's trainer step (``SimpleTrainer`` / ``SegAMPTrainer``
  ``run_step``: forward, losses, backward, optimizer step; then the LR scheduler's step) with the
  optimizer and schedule of d2seg's ``Trainer``, on random batches of ``--batch-size`` crops
  (INPUT.CROP.SIZE, else ``--input-size``), after ``--warmup`` steps.
- ``data``: images/s of the config's training data loader (DATASETS.TRAIN, its mapper and
  DATALOADER.NUM_WORKERS), after ``--warmup`` batches.

Peak memory is ``torch.cuda.max_memory_allocated()`` on a GPU (what MMSegmentation's model zoo
reports) and the process's peak resident set size on the CPU. Every result names the machine,
the torch version and the thread count. Weights are random (speed does not depend on them).
"""
import argparse
import glob
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

import d2seg  # noqa: F401  (registration)
from d2seg.config import add_d2seg_config

__all__ = ["machine_info", "build_cfg", "benchmark_inference", "benchmark_train",
           "benchmark_data", "main"]


# ---- environment ---------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "allocator": allocator(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def allocator() -> str:
    """The malloc this process runs under: jemalloc / tcmalloc when preloaded (LD_PRELOAD),
    else glibc's (with MALLOC_* tunables, if set)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        maps = ""
    for name in ("jemalloc", "tcmalloc"):
        if f"lib{name}" in maps:
            return name
    tunables = sorted(k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")
    return "glibc" + (f" ({', '.join(tunables)})" if tunables else "")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _progress(iterable, total, desc, enabled=True):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, leave=False)


def _memory(device: str) -> dict:
    if device.startswith("cuda"):
        return {"max_memory_mb": torch.cuda.max_memory_allocated() / 2 ** 20,
                "memory_kind": "torch.cuda.max_memory_allocated"}
    return {"max_memory_mb": peak_rss_mb(), "memory_kind": "peak RSS (process)"}


# ---- config --------------------------------------------------------------------------------
# command-line speed option -> MODEL.SPEED key
SPEED_FLAGS = {"channels_last": "CHANNELS_LAST", "compile": "COMPILE", "winograd": "WINOGRAD",
               "fuse": "FUSE_BN", "fused_attention": "FUSED_ATTENTION", "gemm_1x1": "GEMM_1X1",
               "fold_projections": "FOLD_PROJECTIONS"}


def build_cfg(config_file: str, opts=(), *, device=None, amp=False, amp_dtype=None, **speed):
    """The config with the command line's speed options (keyword names of ``SPEED_FLAGS``;
    None = keep the config's value)."""
    cfg = get_cfg()
    add_d2seg_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if device:
        cfg.MODEL.DEVICE = device
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU visible: benchmarking on the CPU", file=sys.stderr)
        cfg.MODEL.DEVICE = "cpu"
    cpu = cfg.MODEL.DEVICE == "cpu"
    if amp:
        dtype = amp_dtype or ("bfloat16" if cpu else "float16")
        cfg.SOLVER.AMP.ENABLED = True
        cfg.SOLVER.AMP.DTYPE = dtype
    for flag, value in speed.items():
        if value is not None:
            cfg.MODEL.SPEED[SPEED_FLAGS[flag]] = value
    cfg.freeze()
    return cfg


def _random_image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()


# ---- tasks ---------------------------------------------------------------------------------
def benchmark_inference(cfg, *, num_iter=200, warmup=5, input_size=(512, 1024), progress=True):
    """ms/img of forward + post-processing (d2seg's inference + argmax + host copy)."""
    from detectron2.modeling import build_model

    from d2seg.modeling.speed import SpeedOptions, optimize_for_inference

    device = cfg.MODEL.DEVICE
    model = build_model(cfg)
    optimize_for_inference(model, SpeedOptions.from_config(cfg))
    h, w = input_size
    image = _random_image(h, w)
    inputs = [{"image": image.to(device), "height": h, "width": w}]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        return _timed(lambda: model(inputs)[0]["sem_seg"].argmax(dim=0).cpu(), warmup=warmup,
                      num_iter=num_iter, desc="inference", progress=progress,
                      input_size=input_size, device=device)


def _timed(run, *, warmup, num_iter, desc, progress, input_size, device="cpu") -> dict:
    """Calls ``run()`` (one image: forward + argmax on the host) ``warmup + num_iter`` times;
    ms/img, img/s and the median of the last ``num_iter``, with the output's shape and memory."""
    times = []
    for i in _progress(range(warmup + num_iter), warmup + num_iter, desc, progress):
        _sync(device)
        start = time.perf_counter()
        pred = run()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    total = sum(times)
    return {
        "ms_per_img": 1000 * total / len(times),
        "img_per_s": len(times) / total,
        "median_ms": 1000 * sorted(times)[len(times) // 2],
        "input_size": list(input_size),
        "output_shape": list(pred.shape),
        **_memory(device),
    }


def benchmark_onnx(cfg, *, num_iter=200, warmup=5, input_size=(512, 1024), progress=True):
    """ms/img of ONNX Runtime (CPU execution provider, as many intra-op threads as torch) on
    the model exported by d2seg.export (static input size, BN folded, normalisation in the
    graph) + argmax, as :func:`benchmark_inference` times PyTorch. Whole mode only."""
    import tempfile

    import onnxruntime as ort
    from detectron2.modeling import build_model

    from d2seg.export.exporters import export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    if cfg.TEST.MODE != "whole":
        raise ValueError(f"--format onnx times whole-mode inference; {cfg.TEST.MODE!r} given")
    h, w = input_size
    module = SegmentationExportModule(plain_for_export(build_model(cfg)), cfg.INPUT.FORMAT)
    image = _random_image(h, w)[None]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export(module, "onnx", path, image, dynamic=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"image": image.numpy()}
    res = _timed(lambda: session.run(None, feed)[0][0].argmax(0), warmup=warmup,
                 num_iter=num_iter, desc="onnxruntime", progress=progress, input_size=(h, w))
    return {**res, "onnxruntime": ort.__version__}


def _random_batch(n, h, w, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float(),
             "sem_seg": torch.randint(0, num_classes, (h, w), generator=g),
             "height": h, "width": w} for _ in range(n)]


def build_train_step(cfg, batch_size, crop):
    """Model, Detectron2 trainer (d2seg's optimizer and schedule), scheduler and data."""
    from d2seg.engine import Trainer
    from d2seg.engine.amp import build_step_trainer

    model = Trainer.build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    batch = _random_batch(batch_size, crop[0], crop[1], cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)

    def loader():
        while True:
            yield batch

    trainer = build_step_trainer(cfg, model, loader(), optimizer)
    return model, trainer, scheduler


def benchmark_train(cfg, *, num_iter=20, warmup=2, batch_size=2, input_size=(512, 1024),
                    progress=True):
    """img/s of the trainer's run_step (+ scheduler step) on random batches."""
    device = cfg.MODEL.DEVICE
    crop = tuple(cfg.INPUT.CROP.SIZE) if cfg.INPUT.CROP.ENABLED else tuple(input_size)
    model, trainer, scheduler = build_train_step(cfg, batch_size, crop)
    times = []
    with EventStorage(0) as storage:
        trainer.storage = storage
        for i in _progress(range(warmup + num_iter), warmup + num_iter, "train", progress):
            if i == warmup and device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            storage.iter = trainer.iter = i
            _sync(device)
            start = time.perf_counter()
            trainer.run_step()
            scheduler.step()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    total = sum(times)
    return {
        "s_per_iter": total / len(times),
        "img_per_s": batch_size * len(times) / total,
        "median_s_per_iter": sorted(times)[len(times) // 2],
        "batch_size": batch_size,
        "crop_size": list(crop),
        **_memory(device),
    }


def benchmark_data(cfg, *, num_iter=100, warmup=5, progress=True):
    """img/s of the config's training data loader."""
    from d2seg.engine import Trainer

    loader = iter(Trainer.build_train_loader(cfg))
    images, start = 0, None
    for i in _progress(range(warmup + num_iter), warmup + num_iter, "data", progress):
        if i == warmup:
            start = time.perf_counter()
        batch = next(loader)
        if i >= warmup:
            images += len(batch)
    total = time.perf_counter() - start
    return {
        "img_per_s": images / total,
        "ms_per_img": 1000 * total / images,
        "batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "dataset": list(cfg.DATASETS.TRAIN),
        **_memory("cpu"),
    }


# ---- command line --------------------------------------------------------------------------
def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config-file", metavar="FILE", help="a d2seg config")
    src.add_argument("--all", metavar="FOLDER",
                     help="benchmark every *.yaml under FOLDER (each in its own process) and "
                          "print a markdown table")
    p.add_argument("--task", choices=["inference", "train", "data"], default="inference")
    p.add_argument("--format", choices=["pytorch", "onnx"], default="pytorch",
                   help="inference: PyTorch (MODEL.SPEED options) or ONNX Runtime (CPU) on the "
                        "exported model (d2seg.export)")
    p.add_argument("--num-iter", type=int, default=None,
                   help="timed iterations (default: inference 200, train 20, data 100)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations first (default: inference 5, train 2, data 5)")
    p.add_argument("--batch-size", type=int, default=2, help="train: images per step")
    p.add_argument("--input-size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"),
                   help="inference image size (train: when INPUT.CROP is disabled)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: MODEL.DEVICE)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--amp", action="store_true",
                   help="autocast (inference) / SegAMPTrainer (train); dtype --amp-dtype")
    p.add_argument("--amp-dtype", choices=["float16", "bfloat16"], default=None,
                   help="default: bfloat16 on the CPU, float16 on a GPU")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="MODEL.SPEED.CHANNELS_LAST")
    p.add_argument("--compile", action="store_true", default=None, help="MODEL.SPEED.COMPILE")
    p.add_argument("--winograd", choices=["", "F2", "F4"], default=None,
                   help="MODEL.SPEED.WINOGRAD (CPU)")
    p.add_argument("--gemm-1x1", action="store_true", default=None,
                   help="MODEL.SPEED.GEMM_1X1 (CPU: 1x1 convs as GEMMs)")
    p.add_argument("--fused-attention", action="store_true", default=None,
                   help="MODEL.SPEED.FUSED_ATTENTION (scaled_dot_product_attention)")
    p.add_argument("--fold-projections", action="store_true", default=None,
                   help="MODEL.SPEED.FOLD_PROJECTIONS (ANN: out_project into the bottleneck)")
    p.add_argument("--fuse", action=argparse.BooleanOptionalAction, default=None,
                   help="inference: fold BN into convs (default: MODEL.SPEED.FUSE_BN)")
    p.add_argument("--json", action="store_true", help="print one JSON object (machines)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides: KEY VALUE ...")
    return p


DEFAULT_ITERS = {"inference": (200, 5), "train": (20, 2), "data": (100, 5)}


def run_one(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = build_cfg(args.config_file, args.opts, device=args.device, amp=args.amp,
                    amp_dtype=args.amp_dtype, **{f: getattr(args, f) for f in SPEED_FLAGS})
    num_iter, warmup = DEFAULT_ITERS[args.task]
    num_iter = args.num_iter if args.num_iter is not None else num_iter
    warmup = args.warmup if args.warmup is not None else warmup
    progress = not args.no_progress
    if args.format == "onnx":
        if args.task != "inference":
            raise SystemExit("--format onnx times --task inference only")
        res = benchmark_onnx(cfg, num_iter=num_iter, warmup=warmup,
                             input_size=tuple(args.input_size), progress=progress)
    elif args.task == "inference":
        res = benchmark_inference(cfg, num_iter=num_iter, warmup=warmup,
                                  input_size=tuple(args.input_size), progress=progress)
    elif args.task == "train":
        res = benchmark_train(cfg, num_iter=num_iter, warmup=warmup, batch_size=args.batch_size,
                              input_size=tuple(args.input_size), progress=progress)
    else:
        res = benchmark_data(cfg, num_iter=num_iter, warmup=warmup, progress=progress)
    speed = cfg.MODEL.SPEED
    return {
        "config": args.config_file,
        "task": args.task,
        "format": args.format,
        "num_iter": num_iter,
        "warmup": warmup,
        "options": {
            "amp": cfg.SOLVER.AMP.DTYPE if cfg.SOLVER.AMP.ENABLED else "",
            "channels_last": speed.CHANNELS_LAST, "compile": speed.COMPILE,
            "winograd": speed.WINOGRAD, "fused_attention": speed.FUSED_ATTENTION,
            "gemm_1x1": speed.GEMM_1X1, "fold_projections": speed.FOLD_PROJECTIONS,
            "fuse_bn": speed.FUSE_BN and args.task == "inference",
            "test_mode": cfg.TEST.MODE,
        },
        **res,
        "machine": machine_info(cfg.MODEL.DEVICE),
    }


def format_result(r: dict) -> str:
    m = r["machine"]
    hw = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores)"
    lines = [f"{r['config']} - {r['task']} on {m['device']}: {hw}, torch {m['torch']}, "
             f"{m['threads']} threads, load {m.get('load_avg')}",
             f"options: {r['options']}, {r['num_iter']} iterations after {r['warmup']} warm-up"]
    if r["task"] == "inference":
        lines.append(f"{r['ms_per_img']:.1f} ms/img ({r['img_per_s']:.3f} img/s), input "
                     f"{r['input_size'][0]}x{r['input_size'][1]}")
    elif r["task"] == "train":
        lines.append(f"{r['img_per_s']:.3f} img/s ({r['s_per_iter']:.3f} s/iter, batch "
                     f"{r['batch_size']} x {r['crop_size'][0]}x{r['crop_size'][1]})")
    else:
        lines.append(f"{r['img_per_s']:.1f} img/s ({r['num_workers']} workers, "
                     f"{', '.join(r['dataset'])})")
    lines.append(f"memory: {r['max_memory_mb']:.0f} MB ({r['memory_kind']})")
    return "\n".join(lines)


def markdown_table(results) -> str:
    rows = ["| config | task | ms/img | img/s | memory MB | options |", "|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['config']} | {r.get('task', '')} | error: {r['error']} | | | |")
            continue
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items() if v not in ("", False))
        ms = r.get("ms_per_img", 1000 / r["img_per_s"])
        rows.append(f"| {os.path.basename(r['config'])} | {r['task']} | {ms:.1f} | "
                    f"{r['img_per_s']:.3f} | {r['max_memory_mb']:.0f} | {opts} |")
    m = results[0]["machine"] if results and "machine" in results[0] else machine_info()
    hw = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores)"
    rows.append("")
    rows.append(f"Machine: {hw}, torch {m['torch']}, {m['threads']} threads; memory: "
                f"{results[0].get('memory_kind', '') if results else ''}.")
    return "\n".join(rows)


def run_all(args, argv) -> list:
    files = sorted(f for f in glob.glob(os.path.join(args.all, "**", "*.yaml"), recursive=True)
                   if f"{os.sep}_base_{os.sep}" not in f)
    # each config in a fresh process: isolated peak memory, no state carried over
    base = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--all":
            skip = True
            continue
        if a.startswith("--all=") or a == "--json":
            continue
        base.append(a)
    results = []
    for f in _progress(files, len(files), "configs", not args.no_progress):
        cmd = [sys.executable, os.path.abspath(__file__), "--config-file", f, "--json",
               "--no-progress", *base]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        try:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            results.append({"config": f, "task": args.task, "error": err[:200]})
    return results


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_parser().parse_args(argv)
    if args.all:
        results = run_all(args, argv)
        print(json.dumps(results, indent=1) if args.json else markdown_table(results))
        return results
    result = run_one(args)
    print(json.dumps(result) if args.json else format_result(result))
    return result


if __name__ == "__main__":
    main()
