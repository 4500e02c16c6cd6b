#!/usr/bin/env python
"""Trains the same recipe with d2seg and with MMSegmentation 0.30 and compares them.

    python dev/compare_training_mmseg.py run \
        --config-file configs/camvid/fcn_r18-d8-narrow_128x128_camvid.yaml --seeds 0 1 \
        --out-dir output/compare_camvid --figure docs/img/camvid_curves.png [KEY VALUE ...]

The recipe is the d2seg config (plus KEY VALUE overrides); mmseg's side is built from the same
values: mmseg's ``fcn_r18-d8`` model with the config's backbone widths, head channels and class
count; its Cityscapes-style pipeline (Resize with ratio_range, RandomCrop with cat_max_ratio,
RandomFlip, PhotoMetricDistortion, Normalize, Pad) with the config's scales and crop; SGD with the
same LR, momentum and weight decay, poly schedule, batch, iterations, evaluation period; a
``CustomDataset`` over the same image and label folders as the config's registered datasets.
Both train from scratch (each library's own initialisation), in the main process (no loader
workers), ``--threads`` threads each.

``run`` does, for each seed, the d2seg and the mmseg training at the same time (two processes:
both see the same machine load), then ``evaluate`` and ``report``:

- ``evaluate``: each final model predicts the first test dataset with its own library's
  inference; the predictions are scored with both libraries' evaluators (d2seg's
  SemSegEvaluator, mmseg's ``CustomDataset.evaluate``);
- ``report``: a markdown table (mIoU per seed and evaluator, mean, s/iter, peak memory) in
  ``<out-dir>/table.md`` and a figure of both libraries' loss and mIoU curves.

s/iter is the median over consecutive training log lines of (time between them) / (iterations
between them), intervals holding an evaluation left out (data loading included; the same clock for
both libraries); peak memory is the training process's peak resident set size (evaluations
included). Runs still training are reported from their logs so far.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
LIBS = ("d2seg", "mmseg")


# ---- the recipe ------------------------------------------------------------------------------
def d2seg_cfg(args, seed, out_dir):
    from d2seg.engine import setup_cfg
    from detectron2.engine import default_argument_parser

    opts = list(args.opts) + ["SEED", str(seed), "OUTPUT_DIR", out_dir]
    d2_args = default_argument_parser().parse_args(["--config-file", args.config_file] + opts)
    return setup_cfg(d2_args)


def dataset_folders(name):
    """(image_root, label_root, image_suffix, label_suffix) of a registered folder dataset."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    dicts = DatasetCatalog.get(name)  # also checks the folders
    meta = MetadataCatalog.get(name)
    img, gt = dicts[0]["file_name"], dicts[0]["sem_seg_file_name"]
    return meta.image_root, meta.sem_seg_root, os.path.splitext(img)[1], os.path.splitext(gt)[1]


def mmseg_cfg(cfg, out_dir, seed):
    """mmseg 0.30's config of the recipe in the d2seg ``cfg``."""
    from mmcv import Config
    from detectron2.data import MetadataCatalog
    from mmseg_peer import mmseg_config, syncbn_to_bn

    r, head, aux = cfg.MODEL.RESNETS, cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.AUX_HEAD
    base = mmseg_config(f"fcn/fcn_r{r.DEPTH}-d8_512x1024_80k_cityscapes")
    model = base.model
    syncbn_to_bn(model)
    model.pretrained = None
    widths = [r.RES2_OUT_CHANNELS * 2 ** i for i in range(4)]  # BasicBlock stages (R-18/34)
    model.backbone.update(stem_channels=r.STEM_OUT_CHANNELS, base_channels=r.RES2_OUT_CHANNELS)
    model.decode_head.update(in_channels=widths[3], channels=head.CONVS_DIM,
                             num_classes=head.NUM_CLASSES)
    model.auxiliary_head.update(in_channels=widths[2], channels=aux.CONVS_DIM,
                                num_classes=head.NUM_CLASSES)
    norm = dict(mean=list(cfg.MODEL.PIXEL_MEAN), std=list(cfg.MODEL.PIXEL_STD), to_rgb=True)
    crop = tuple(cfg.INPUT.CROP.SIZE)
    train_pipeline = [
        dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
        dict(type="Resize", img_scale=tuple(cfg.INPUT.IMG_SCALE),
             ratio_range=tuple(cfg.INPUT.RATIO_RANGE)),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA),
        dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion"),
        dict(type="Normalize", **norm), dict(type="Pad", size=crop, pad_val=0, seg_pad_val=255),
        dict(type="DefaultFormatBundle"), dict(type="Collect", keys=["img", "gt_semantic_seg"]),
    ]
    test_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="MultiScaleFlipAug", img_scale=tuple(cfg.INPUT.TEST_IMG_SCALE), flip=False,
             transforms=[dict(type="Resize", keep_ratio=True), dict(type="RandomFlip"),
                         dict(type="Normalize", **norm), dict(type="ImageToTensor", keys=["img"]),
                         dict(type="Collect", keys=["img"])]),
    ]

    def dataset(name, pipeline):
        img_root, gt_root, img_suffix, gt_suffix = dataset_folders(name)
        meta = MetadataCatalog.get(name)
        return dict(type="CustomDataset", img_dir=img_root, ann_dir=gt_root, img_suffix=img_suffix,
                    seg_map_suffix=gt_suffix, classes=list(meta.stuff_classes),
                    palette=[list(c) for c in meta.stuff_colors],
                    reduce_zero_label=meta.get("reduce_zero_label", False), pipeline=pipeline)

    s = cfg.SOLVER
    iters = s.MAX_ITER
    return Config(dict(
        model=model,
        data=dict(samples_per_gpu=s.IMS_PER_BATCH, workers_per_gpu=cfg.DATALOADER.NUM_WORKERS,
                  persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0,  # torch refuses it with 0
                  train=dataset(cfg.DATASETS.TRAIN[0], train_pipeline),
                  val=dataset(cfg.DATASETS.TEST[0], test_pipeline),
                  test=dataset(cfg.DATASETS.TEST[0], test_pipeline)),
        optimizer=dict(type="SGD", lr=s.BASE_LR, momentum=s.MOMENTUM, weight_decay=s.WEIGHT_DECAY),
        optimizer_config=dict(),
        lr_config=dict(policy="poly", power=s.POLY_LR_POWER, min_lr=s.POLY_LR_MIN_LR, by_epoch=False),
        runner=dict(type="IterBasedRunner", max_iters=iters),
        checkpoint_config=dict(by_epoch=False, interval=iters),
        evaluation=dict(interval=cfg.TEST.EVAL_PERIOD or iters, metric="mIoU", pre_eval=True),
        log_config=dict(interval=20, hooks=[dict(type="TextLoggerHook", by_epoch=False)]),
        log_level="INFO", load_from=None, resume_from=None, workflow=[("train", 1)],
        cudnn_benchmark=False, dist_params=dict(backend="gloo"),
        work_dir=out_dir, gpu_ids=[0], device="cpu", seed=seed,
    ))


# ---- training --------------------------------------------------------------------------------
def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train_d2seg(args, seed, out_dir):
    from d2seg.engine import Trainer

    cfg = d2seg_cfg(args, seed, out_dir)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg


def train_mmseg(args, seed, out_dir):
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.apis import set_random_seed, train_segmentor
    from mmseg.datasets import build_dataset
    from mmseg.models import build_segmentor

    d2_cfg = d2seg_cfg(args, seed, os.path.join(out_dir, "d2seg_cfg"))
    cfg = mmseg_cfg(d2_cfg, out_dir, seed)
    os.makedirs(out_dir, exist_ok=True)
    cfg.dump(os.path.join(out_dir, "mmseg_config.py"))
    set_random_seed(seed, deterministic=False)
    model = build_segmentor(cfg.model, train_cfg=cfg.get("train_cfg"), test_cfg=cfg.get("test_cfg"))
    model.init_weights()
    datasets = [build_dataset(cfg.data.train)]
    model.CLASSES, model.PALETTE = datasets[0].CLASSES, datasets[0].PALETTE
    train_segmentor(model, datasets, cfg, distributed=False, validate=True,
                    timestamp=time.strftime("%Y%m%d_%H%M%S"), meta=dict(seed=seed))
    return d2_cfg


def cmd_train(args):
    import torch

    torch.set_num_threads(args.threads)
    out_dir = run_dir(args.out_dir, args.lib, args.seed)
    start = time.time()
    cfg = (train_d2seg if args.lib == "d2seg" else train_mmseg)(args, args.seed, out_dir)
    with open(os.path.join(out_dir, "run.json"), "w") as f:
        json.dump({"lib": args.lib, "seed": args.seed, "wall_s": time.time() - start,
                   "peak_rss_mib": peak_rss_mib(), "threads": args.threads,
                   "max_iter": cfg.SOLVER.MAX_ITER, "eval_period": cfg.TEST.EVAL_PERIOD}, f)


def run_dir(out_dir, lib, seed):
    return os.path.join(out_dir, f"{lib}_seed{seed}")


# ---- evaluation ------------------------------------------------------------------------------
def predict_d2seg(args, seed, out_dir):
    """{image file: argmax label map} from d2seg's own test loader and model."""
    import torch
    from d2seg.checkpoint import SegCheckpointer
    from d2seg.engine import Trainer

    cfg = d2seg_cfg(args, seed, out_dir)
    model = Trainer.build_model(cfg).eval()
    SegCheckpointer(model).load(os.path.join(out_dir, "model_final.pth"))
    preds = {}
    with torch.no_grad():
        for batch in Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0]):
            for inp, out in zip(batch, model(batch)):
                preds[inp["file_name"]] = out["sem_seg"].argmax(0).numpy().astype("uint8")
    return preds


def mmseg_dataset(args, seed, out_dir):
    """mmseg's test dataset of the recipe, and its config."""
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.datasets import build_dataset

    cfg = mmseg_cfg(d2seg_cfg(args, seed, os.path.join(out_dir, "d2seg_cfg")), out_dir, seed)
    return build_dataset(cfg.data.test, dict(test_mode=True)), cfg


def mmseg_model_and_loader(args, seed, out_dir):
    from mmcv.parallel import MMDataParallel
    from mmcv.runner import load_checkpoint
    from mmseg.datasets import build_dataloader
    from mmseg.models import build_segmentor

    dataset, cfg = mmseg_dataset(args, seed, out_dir)
    loader = build_dataloader(dataset, samples_per_gpu=1, workers_per_gpu=0, dist=False,
                              shuffle=False, persistent_workers=False)
    model = build_segmentor(cfg.model, test_cfg=cfg.get("test_cfg"))
    load_checkpoint(model, os.path.join(out_dir, "latest.pth"), map_location="cpu")
    return MMDataParallel(model.eval(), device_ids=None), dataset, loader


def predict_mmseg(args, seed, out_dir):
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.apis import single_gpu_test

    model, dataset, loader = mmseg_model_and_loader(args, seed, out_dir)
    results = single_gpu_test(model, loader, pre_eval=False)
    return {os.path.join(dataset.img_dir, info["filename"]): r.astype("uint8")
            for info, r in zip(dataset.img_infos, results)}


def score_d2seg(dataset_name, preds):
    """d2seg's SemSegEvaluator on label maps (as one-hot scores)."""
    import torch
    from d2seg.evaluation.sem_seg_evaluator import SemSegEvaluator
    from detectron2.data import MetadataCatalog

    n = len(MetadataCatalog.get(dataset_name).stuff_classes)
    ev = SemSegEvaluator(dataset_name, distributed=False)
    ev.reset()
    for file_name, pred in preds.items():
        onehot = torch.nn.functional.one_hot(torch.from_numpy(pred).long(), n).permute(2, 0, 1)
        ev.process([{"file_name": file_name}], [{"sem_seg": onehot.float()}])
    return ev.evaluate()["sem_seg"]["mIoU"]


def score_mmseg(dataset, preds):
    """mmseg's CustomDataset.evaluate (mIoU in [0, 1]) on label maps keyed by image file."""
    import logging

    order = [preds[os.path.join(dataset.img_dir, info["filename"])] for info in dataset.img_infos]
    return 100 * dataset.evaluate(order, metric="mIoU", logger=logging.getLogger("silent"))["mIoU"]


def cmd_evaluate(args):
    import d2seg  # noqa: F401  (registers the datasets)
    import torch

    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        preds = {}
        for lib in LIBS:
            out_dir = run_dir(args.out_dir, lib, seed)
            cache = os.path.join(out_dir, "predictions.npz")  # evaluate again without predicting
            if os.path.isfile(cache):
                with np.load(cache) as f:
                    preds[lib] = {str(n): f[f"p{i}"] for i, n in enumerate(f["names"])}
            else:
                preds[lib] = predict_d2seg(args, seed, out_dir) if lib == "d2seg" else \
                    predict_mmseg(args, seed, out_dir)
                np.savez_compressed(cache, names=np.array(list(preds[lib])),
                                    **{f"p{i}": p for i, p in enumerate(preds[lib].values())})
        mm_dataset = mmseg_dataset(args, seed, run_dir(args.out_dir, "mmseg", seed))[0]
        name = d2seg_cfg(args, seed, run_dir(args.out_dir, "d2seg", seed)).DATASETS.TEST[0]
        for lib in LIBS:
            if set(preds[lib]) != set(preds["d2seg"]):
                raise RuntimeError(f"{lib} predicted other images than d2seg: the two test "
                                   "sets differ")
            res = {"d2seg_evaluator": float(score_d2seg(name, preds[lib])),
                   "mmseg_evaluator": float(score_mmseg(mm_dataset, preds[lib]))}
            path = os.path.join(run_dir(args.out_dir, lib, seed), "eval.json")
            with open(path, "w") as f:
                json.dump(res, f)
            print(f"{lib} seed {seed}: mIoU {res}")


# ---- report ----------------------------------------------------------------------------------
def read_curves(lib, out_dir, eval_period):
    """([(iter, loss)], [(iter, mIoU %)]) from each library's log."""
    loss, miou = [], []
    if lib == "d2seg":
        with open(os.path.join(out_dir, "metrics.json")) as f:
            for line in f:
                rec = json.loads(line)
                it = rec.get("iteration", -1) + 1
                if "total_loss" in rec:
                    loss.append((it, rec["total_loss"]))
                if "sem_seg/mIoU" in rec:  # the final evaluation is stored at MAX_ITER
                    miou.append((eval_period * round(it / eval_period), rec["sem_seg/mIoU"]))
    else:
        logs = sorted(f for f in os.listdir(out_dir) if f.endswith(".log.json"))
        with open(os.path.join(out_dir, logs[-1])) as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("mode") == "train":
                    loss.append((rec["iter"], rec["loss"]))
                elif rec.get("mode") == "val":  # its "iter" counts val images: not the step
                    miou.append(((len(miou) + 1) * eval_period, 100 * rec["mIoU"]))
    return loss, miou


LOG_LINE = {  # a training log line of each library: (time stamp, iteration)
    "d2seg": re.compile(r"^\[\d\d/\d\d (\d\d):(\d\d):(\d\d) d2\.utils\.events\]:.*\biter: (\d+)"),
    "mmseg": re.compile(r"^\S+ (\d\d):(\d\d):(\d\d),\d+ - mmseg - INFO - Iter \[(\d+)/"),
}


def wall_s_per_iter(lib, out_dir, eval_period):
    """Seconds per iteration between consecutive training log lines (the same clock for both
    libraries: each logger's own "time" is a mean (mmseg) or a median (Detectron2) over its
    window), leaving out the intervals that hold an evaluation (Detectron2 logs after its
    evaluation hook, mmseg before)."""
    stamps = []
    with open(os.path.join(out_dir, "stdout.log")) as f:
        for line in f:
            m = LOG_LINE[lib].match(line)
            if m:
                h, mi, sec, it = map(int, m.groups())
                stamps.append((it, 3600 * h + 60 * mi + sec))
    has_eval = {"d2seg": lambda i0, i1: (i1 + 1) % eval_period == 0,
                "mmseg": lambda i0, i1: i0 % eval_period == 0}[lib]
    return [(t1 - t0) % 86400 / (i1 - i0) for (i0, t0), (i1, t1) in zip(stamps, stamps[1:])
            if not has_eval(i0, i1)]


def median(values):
    return statistics.median(values) if values else float("nan")


def cmd_report(args):
    rows, curves = [], {}
    for lib in LIBS:
        for seed in args.seeds:
            d = run_dir(args.out_dir, lib, seed)
            run = {"peak_rss_mib": float("nan"), "wall_s": float("nan")}  # still training
            if os.path.isfile(os.path.join(d, "run.json")):
                with open(os.path.join(d, "run.json")) as f:
                    run = json.load(f)
            ev = {}
            if os.path.isfile(os.path.join(d, "eval.json")):
                with open(os.path.join(d, "eval.json")) as f:
                    ev = json.load(f)
            period = run.get("eval_period") or args.eval_period
            loss, miou = read_curves(lib, d, period)
            curves[(lib, seed)] = (loss, miou)
            rows.append(dict(lib=lib, seed=seed, own=miou[-1][1] if miou else float("nan"),
                             own_iter=miou[-1][0] if miou else 0,
                             d2=ev.get("d2seg_evaluator", float("nan")),
                             mm=ev.get("mmseg_evaluator", float("nan")),
                             s_iter=median(wall_s_per_iter(lib, d, period)),
                             rss=run["peak_rss_mib"],
                             wall=run["wall_s"], loss=loss[-1][1]))
    lines = ["| library | seed | mIoU (own log, at iter) | mIoU, d2seg evaluator | "
             "mIoU, mmseg evaluator | last logged loss | s/iter | peak RSS MiB | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['lib']} | {r['seed']} | {r['own']:.2f} ({r['own_iter']}) | {r['d2']:.2f} | "
                     f"{r['mm']:.2f} | {r['loss']:.3f} | {r['s_iter']:.2f} | {r['rss']:.0f} | "
                     f"{r['wall']:.0f} |")
    by = {lib: [r for r in rows if r["lib"] == lib] for lib in LIBS}
    for lib, rs in by.items():
        mean = lambda k: statistics.mean(r[k] for r in rs)  # noqa: E731
        lines.append(f"| **{lib} mean** | | {mean('own'):.2f} | {mean('d2'):.2f} | {mean('mm'):.2f} | "
                     f"{mean('loss'):.3f} | {mean('s_iter'):.2f} | {mean('rss'):.0f} | "
                     f"{mean('wall'):.0f} |")
    lines.append("")
    for ev, what in (("own", "own log"), ("d2", "d2seg evaluator"), ("mm", "mmseg evaluator")):
        lo, hi = min(r[ev] for r in by["mmseg"]), max(r[ev] for r in by["mmseg"])
        mean = statistics.mean(r[ev] for r in by["d2seg"])
        if mean == mean:  # not NaN (evaluated)
            lines.append(f"- {what}: d2seg mean mIoU {mean:.2f}, mmseg's seeds {lo:.2f}..{hi:.2f}: "
                         f"{'inside' if lo <= mean <= hi else 'outside'} mmseg's seed-to-seed range")
    ratio = (statistics.mean(r["s_iter"] for r in by["d2seg"])
             / statistics.mean(r["s_iter"] for r in by["mmseg"]))
    lines.append(f"- s/iter d2seg / mmseg: {ratio:.3f}")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    if args.figure:
        plot(curves, args.figure)


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    colors = {"d2seg": "tab:blue", "mmseg": "tab:orange"}
    for (lib, seed), (loss, miou) in sorted(curves.items()):
        style = "-" if seed == min(s for _, s in curves) else "--"
        it, v = np.array(loss).T  # each log point is already over 20 iterations
        ax_loss.plot(it, v, style, color=colors[lib], label=f"{lib} seed {seed}", lw=1)
        if miou:
            it, v = np.array(miou).T
            ax_miou.plot(it, v, style + "o", color=colors[lib], label=f"{lib} seed {seed}", ms=3, lw=1)
    ax_loss.set(xlabel="iteration", ylabel="loss (median | mean of 20 it.)",
                title="training loss")
    ax_miou.set(xlabel="iteration", ylabel="mIoU % (val, own evaluator)", title="mIoU")
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    print(f"figure: {path}")


# ---- all of it -------------------------------------------------------------------------------
def cmd_run(args):
    common = ["--config-file", args.config_file, "--out-dir", args.out_dir,
              "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    for seed in args.seeds:
        procs = []
        for lib in LIBS:  # both at once: each sees the load of the other
            d = run_dir(args.out_dir, lib, seed)
            if os.path.isfile(os.path.join(d, "run.json")) and not args.force:
                print(f"{d}: trained already (run.json); --force retrains")
                continue
            os.makedirs(d, exist_ok=True)
            cmd = [sys.executable, __file__, "train", "--lib", lib, "--seed", str(seed)] + common
            print("$", " ".join(cmd + list(args.opts)), flush=True)
            log = open(os.path.join(d, "stdout.log"), "w")
            procs.append((lib, subprocess.Popen(cmd + list(args.opts), stdout=log,
                                                stderr=subprocess.STDOUT, env=env), log))
        for lib, p, log in procs:
            if p.wait():
                sys.exit(f"{lib} seed {seed} failed (exit {p.returncode}): see {log.name}")
    seeds = [str(s) for s in args.seeds]
    subprocess.check_call([sys.executable, __file__, "evaluate", "--seeds", *seeds] + common
                          + list(args.opts), env=env)
    report = [sys.executable, __file__, "report", "--seeds", *seeds, "--out-dir", args.out_dir]
    subprocess.check_call(report + (["--figure", args.figure] if args.figure else []))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "train", "evaluate", "report"):
        s = sub.add_parser(name)
        s.add_argument("--out-dir", default="output/compare_training_mmseg")
        if name != "report":
            s.add_argument("--config-file", required=True, help="the d2seg config of the recipe")
            s.add_argument("--threads", type=int, default=1, help="torch threads per training")
            s.add_argument("opts", nargs=argparse.REMAINDER, help="d2seg config overrides")
        if name == "train":
            s.add_argument("--lib", choices=LIBS, required=True)
            s.add_argument("--seed", type=int, required=True)
        else:
            s.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
        if name in ("run", "report"):
            s.add_argument("--figure", help="PNG of the loss and mIoU curves")
        if name == "report":
            s.add_argument("--eval-period", type=int, default=100,
                           help="iterations between evaluations, for runs still training")
        if name == "run":
            s.add_argument("--force", action="store_true", help="retrain finished runs")
    args = p.parse_args(argv)
    if args.cmd != "report":
        from mmseg_peer import mmseg_config_root

        mmseg_config_root()  # fails early, with the install command, without mmseg
        import d2seg  # noqa: F401  (registers the datasets)
    {"run": cmd_run, "train": cmd_train, "evaluate": cmd_evaluate, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
