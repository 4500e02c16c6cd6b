#!/usr/bin/env python
"""d2seg against MMSegmentation 0.30 on the same machine, same weights, same inputs.

    python dev/benchmark_vs_mmseg.py --threads 2 --rounds 5 --train-rounds 3 \
        --winograd F4 --channels-last auto --json benchmark.json

For each of the 13 R-50-D8 / HRNet-W18 Cityscapes models: MMSegmentation's model (BN instead
of SyncBN, random weights and BN statistics) and d2seg's (from configs/_base_/models/, loaded
with the converted state_dict) are timed in ONE process, interleaved A-B-B-A round by round
(the machine is noisy), and the medians compared:

- inference: one random 1 x 3 x H x W image (default 512 x 1024); mmseg: ``simple_test``
  (whole inference, resize to the original size, softmax, argmax, ``.cpu().numpy()``) on the
  normalised image, as its tools/benchmark.py times; d2seg: ``model([{"image"...}])`` (which
  also normalises) with ``optimize_for_inference`` (BN folded) and the given MODEL.SPEED
  options, then argmax and ``.cpu().numpy()``;
- train: one step on a batch of ``--train-batch`` random crops: mmseg: ``forward_train``,
  ``_parse_losses``, zero_grad, backward, SGD step (what its train_step + OptimizerHook do);
  d2seg: Detectron2's ``SimpleTrainer.run_step`` with d2seg Trainer's optimizer, then the LR
  scheduler's step. Same SGD (lr 0.01, momentum 0.9, weight decay 5e-4).

Outputs are checked: the unfused d2seg logits equal mmseg's (``max|dlogit| plain``), and those
of the timed, optimised model agree within float rounding (``max|dlogit| opt``).
PSANet's mmseg reference needs mmcv's compiled PSAMask, absent from the pure-Python mmcv
1.7.2: its CPU kernel is built from the C++ source mmcv ships (a minute, cached); without a
compiler the PSANet row is skipped. Exits with a message (status 0) when mmseg is missing.
"""
import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from benchmark import machine_info  # noqa: E402
from mmseg_peer import (  # noqa: E402
    build_mmcv_psamask, build_mmseg_model, calibrate_bn_, calibration_images, mmseg_config,
    stub_mmcv_ext,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name, mmseg config stem, d2seg base model yaml
MODELS = [
    ("FCN", "fcn/fcn_r50-d8_512x1024_40k_cityscapes", "fcn_r50-d8"),
    ("PSPNet", "pspnet/pspnet_r50-d8_512x1024_40k_cityscapes", "pspnet_r50-d8"),
    ("DeepLabV3", "deeplabv3/deeplabv3_r50-d8_512x1024_40k_cityscapes", "deeplabv3_r50-d8"),
    ("DeepLabV3+", "deeplabv3plus/deeplabv3plus_r50-d8_512x1024_40k_cityscapes",
     "deeplabv3plus_r50-d8"),
    ("UPerNet", "upernet/upernet_r50_512x1024_40k_cityscapes", "upernet_r50"),
    ("GCNet", "gcnet/gcnet_r50-d8_512x1024_40k_cityscapes", "gcnet_r50-d8"),
    ("NonLocal", "nonlocal_net/nonlocal_r50-d8_512x1024_40k_cityscapes", "nonlocal_r50-d8"),
    ("DANet", "danet/danet_r50-d8_512x1024_40k_cityscapes", "danet_r50-d8"),
    ("ANN", "ann/ann_r50-d8_512x1024_40k_cityscapes", "ann_r50-d8"),
    ("PSANet", "psanet/psanet_r50-d8_512x1024_40k_cityscapes", "psanet_r50-d8"),
    ("CCNet", "ccnet/ccnet_r50-d8_512x1024_40k_cityscapes", "ccnet_r50-d8"),
    ("FCN-HR18", "hrnet/fcn_hr18_512x1024_40k_cityscapes", "fcn_hr18"),
    ("OCRNet-HR18", "ocrnet/ocrnet_hr18_512x1024_40k_cityscapes", "ocrnet_hr18"),
]
# the transformer families' speed table (issue 21; ADE20K configs, 150 classes, --input-size 512
# 512): name, mmseg config stem, d2seg base model yaml, d2seg options for that config's variant.
# Their weights go through an mmseg checkpoint file and SegCheckpointer, as a user's would.
_ADE = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150]
MODERN = [
    ("SegFormer-B0", "segformer/segformer_mit-b0_512x512_160k_ade20k", "segformer_mit-b0", _ADE),
    ("SegFormer-B2", "segformer/segformer_mit-b2_512x512_160k_ade20k", "segformer_mit-b0",
     _ADE + ["MODEL.MIT.EMBED_DIMS", 64, "MODEL.MIT.NUM_LAYERS", [3, 4, 6, 3]]),
    ("Swin-T UPerNet", "swin/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K",
     "upernet_swin", _ADE),
    ("ConvNeXt-T UPerNet", "convnext/upernet_convnext_tiny_fp16_512x512_160k_ade20k",
     "upernet_convnext", _ADE),
    ("DeiT-S UPerNet", "vit/upernet_deit-s16_512x512_160k_ade20k", "upernet_vit-b16_mln",
     _ADE + ["MODEL.VIT.EMBED_DIMS", 384, "MODEL.VIT.NUM_HEADS", 6, "MODEL.VIT.DROP_PATH_RATE", 0.1,
             "MODEL.NECK.NAME", "", "MODEL.SEM_SEG_HEAD.IN_FEATURES",
             ["vit2", "vit5", "vit8", "vit11"], "MODEL.AUX_HEAD.IN_FEATURES", ["vit11"]]),
    ("ViT-B UPerNet", "vit/upernet_vit-b16_mln_512x512_160k_ade20k", "upernet_vit-b16_mln", _ADE),
]
# the training side of both runs mmseg's plain SGD (the speed of a step, not the recipe)
PLAIN_SGD = ["SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", 0.01, "SOLVER.MOMENTUM", 0.9,
             "SOLVER.WEIGHT_DECAY", 0.0005, "SOLVER.WEIGHT_DECAY_NORM", 0.0005,
             "SOLVER.WARMUP_ITERS", 0, "SOLVER.PARAMWISE.CUSTOM_KEYS", [],
             "SOLVER.LR_DECAY.TYPE", ""]
BN_OPTS = ["MODEL.RESNETS.NORM", "BN", "MODEL.HRNET.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
           "MODEL.AUX_HEAD.NORM", "BN", "MODEL.CASCADE_HEAD.NORM", "BN"]
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


# ---- mmseg side ----------------------------------------------------------------------------
@torch.no_grad()
def scale_classifiers_(model, h=64, w=128):
    """Scales each head's classifier so its logits are O(1) (random weights give HRNet logits
    ~1e3-1e4, and OCR's gather softmax over such logits is chaotic): the logit differences
    reported then mean what they would on a trained model."""
    img = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(4))
    cascade = isinstance(model.decode_head, torch.nn.ModuleList)
    heads = list(model.decode_head) if cascade else [model.decode_head]
    for k, head in enumerate(heads):
        if k < len(heads) - 1:  # a cascade's first stage (an FCN head)
            logits = head(model.extract_feat(img))
        else:
            logits = model.encode_decode(img, img_metas(h, w))
        head.conv_seg.weight /= logits.abs().max() / 2
        head.conv_seg.bias.zero_()


def build_mmseg(stem, size=(64, 128)):
    """mmseg's model with random weights; HRNet's BN statistics calibrated (its fused sums grow
    ~3x per module with random ones); classifiers scaled to O(1) logits."""
    model = build_mmseg_model(mmseg_config(stem))
    if "hr" in stem.split("/")[-1].split("_")[1]:  # HRNet backbones
        calibrate_bn_(model, calibration_images(1, size))
    scale_classifiers_(model, *size)
    return model


def img_metas(h, w, n=1):
    return [dict(ori_shape=(h, w, 3), img_shape=(h, w, 3), pad_shape=(h, w, 3), flip=False,
                 scale_factor=1.0, filename="random.png", ori_filename="random.png")
            for _ in range(n)]


# ---- d2seg side ----------------------------------------------------------------------------
def build_d2seg_cfg(yaml, args, train=False, opts=()):
    from detectron2.config import get_cfg

    from d2seg.config import add_d2seg_config

    cfg = get_cfg()
    add_d2seg_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "_base_", "models", yaml + ".yaml"))
    cfg.merge_from_list(BN_OPTS + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
                                   "INPUT.CROP.SIZE", list(args.input_size),
                                   "MODEL.SPEED.WINOGRAD", args.winograd,
                                   "MODEL.SPEED.FUSED_ATTENTION", not args.no_fused_attention,
                                   "MODEL.SPEED.GEMM_1X1", not args.no_gemm_1x1,
                                   "MODEL.SPEED.FOLD_PROJECTIONS", not args.no_fold_projections,
                                   "MODEL.SPEED.CHANNELS_LAST", False] + list(opts))
    hrnet = cfg.MODEL.BACKBONE.NAME == "build_hrnet_backbone"
    # channels_last pays on HRNet's narrow branches; on the ResNet-D8 models it is neutral
    # (and oneDNN's dilated depthwise convs of DeepLabV3+ are slow in it)
    cfg.MODEL.SPEED.CHANNELS_LAST = args.channels_last == "yes" or (
        args.channels_last == "auto" and hrnet)
    cfg.freeze()
    return cfg


def build_d2seg(yaml, state_dict, args, train=False, opts=None, mm=None):
    from detectron2.modeling import build_model

    from d2seg.checkpoint import SegCheckpointer, convert_mmseg_state_dict

    cfg = build_d2seg_cfg(yaml, args, train, opts or ())
    model = build_model(cfg)
    if opts is not None:  # a transformer family: mmseg's checkpoint file through SegCheckpointer
        import tempfile

        from mmseg_peer import save_mmseg_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "mmseg.pth")
            save_mmseg_checkpoint(mm, path)
            checkpointer = SegCheckpointer(model)
            checkpointer.load(path)
        report = checkpointer.last_report
        if report.errors or set(report.loaded) != set(model.state_dict()):
            raise RuntimeError(f"{yaml}: checkpoint mismatch: {report.error_message()}")
        return cfg, model
    sd = convert_mmseg_state_dict(state_dict, is_cascade=bool(cfg.MODEL.CASCADE_HEAD.NAME),
                                  is_resnet=cfg.MODEL.BACKBONE.NAME != "build_hrnet_backbone")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{yaml}: state_dict mismatch: {missing} {unexpected}")
    return cfg, model


# ---- timing --------------------------------------------------------------------------------
CLOCK = time.perf_counter


def interleaved(fns: dict, rounds: int):
    """Times each callable once per round, the order alternating A-B / B-A; seconds lists."""
    names = list(fns)
    times = {k: [] for k in names}
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            start = CLOCK()
            fns[k]()
            times[k].append(CLOCK() - start)
    return times


def summarize(times, a="mmseg", b="d2seg"):
    ma, mb = statistics.median(times[a]), statistics.median(times[b])
    per_round = [y / x for x, y in zip(times[a], times[b])]
    return {a: ma, b: mb, "ratio": mb / ma, "ratio_per_round_median": statistics.median(per_round),
            "runs": {k: [round(v, 3) for v in vs] for k, vs in times.items()}}


def bench_inference(name, stem, yaml, args, opts=None):
    h, w = args.input_size
    mm = build_mmseg(stem, (h, w))
    _, plain = build_d2seg(yaml, mm.state_dict(), args, opts=opts, mm=mm)
    plain.eval()
    from d2seg.modeling.speed import optimize_for_inference

    g = torch.Generator().manual_seed(1)
    # parity first, on a small input: the unfused model equals mmseg's
    small = torch.randn(1, 3, 64, 128, generator=g)
    with torch.no_grad():
        d_plain = (plain.encode_decode(small) - mm.encode_decode(small, img_metas(64, 128))
                   ).abs().max().item()
    model = optimize_for_inference(copy.deepcopy(plain), plain.speed)
    # the exported graph is built from the plain model (MODEL.SPEED's CPU kernels do not export)
    plain_exportable = plain if args.onnx else None
    del plain
    raw = torch.randint(0, 256, (1, 3, h, w), generator=g).float()
    norm = (raw - MEAN) / STD
    metas = img_metas(h, w)
    inputs = [{"image": raw[0], "height": h, "width": w}]

    def run_mm():
        return mm.simple_test(norm, metas, rescale=True)

    def run_d2():
        return model(inputs)[0]["sem_seg"].argmax(dim=0).cpu().numpy()

    sides = {"mmseg": run_mm, "d2seg": run_d2}
    if args.onnx:
        run_ort, ort_logits = onnx_runner(plain_exportable, raw, args.threads)
        sides["onnxruntime"] = run_ort
    with torch.no_grad():
        ref_logits = mm.encode_decode(norm, metas)
        opt_logits = model.predict_logits(model.normalize(raw[0])[None])
        d_opt = (opt_logits - ref_logits).abs().max().item()
        scale = ref_logits.abs().max().item()
        ref_pred = run_mm()[0]
        same_pred = (ref_pred == run_d2()).mean()
        for _ in range(args.warmup):
            for run in sides.values():
                run()
        times = interleaved(sides, args.rounds)
    res = summarize(times)
    res.update(max_dlogit_plain=d_plain, max_dlogit_opt=d_opt, logit_scale=scale,
               same_argmax=float(same_pred))
    if args.onnx:
        import onnxruntime

        ort_med = statistics.median(times["onnxruntime"])
        res.update(onnxruntime_version=onnxruntime.__version__,
                   ratio_onnxruntime=ort_med / res["mmseg"],
                   ratio_onnxruntime_vs_d2seg=ort_med / res["d2seg"],
                   onnxruntime_s=ort_med,
                   max_dlogit_onnxruntime=(ort_logits - ref_logits).abs().max().item(),
                   same_argmax_onnxruntime=float((ref_pred == run_ort()).mean()))
    return res


def onnx_runner(model, raw, threads):
    """ONNX Runtime (CPU EP, ``threads`` intra-op threads) on ``model`` exported by d2seg.export
    at the input's size (BN folded, normalisation in the graph): the timed function (logits ->
    argmax -> numpy, as the other sides) and the exported logits of ``raw``."""
    import tempfile

    import onnxruntime as ort

    from d2seg.export.exporters import export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    module = SegmentationExportModule(plain_for_export(model), "RGB")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export(module, "onnx", path, raw, dynamic=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"image": raw.numpy()}
    logits = torch.from_numpy(session.run(None, feed)[0])
    return (lambda: session.run(None, feed)[0][0].argmax(0)), logits


def bench_train(name, stem, yaml, args, opts=None):
    from detectron2.utils.events import EventStorage

    from d2seg.engine import Trainer
    from d2seg.engine.amp import build_step_trainer

    h, w = args.input_size
    n = args.train_batch
    mm = build_mmseg(stem)
    if opts is not None:
        opts = list(opts) + PLAIN_SGD
    cfg, model = build_d2seg(yaml, mm.state_dict(), args, train=True, opts=opts, mm=mm)
    mm.train()
    model.train()
    g = torch.Generator().manual_seed(2)
    raw = torch.randint(0, 256, (n, 3, h, w), generator=g).float()
    labels = torch.randint(0, 19, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < 0.05] = 255
    norm = (raw - MEAN) / STD
    metas = img_metas(h, w, n)
    mm_opt = torch.optim.SGD(mm.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)

    def run_mm():
        losses = mm.forward_train(norm, metas, labels[:, None])
        loss, _ = mm._parse_losses(losses)
        mm_opt.zero_grad()
        loss.backward()
        mm_opt.step()

    batch = [{"image": raw[i], "sem_seg": labels[i], "height": h, "width": w} for i in range(n)]

    def loader():
        while True:
            yield batch

    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    trainer = build_step_trainer(cfg, model, loader(), optimizer)

    def run_d2():
        trainer.run_step()
        scheduler.step()
        trainer.iter += 1

    with EventStorage(0):
        for _ in range(args.train_warmup):
            run_mm(), run_d2()
        times = interleaved({"mmseg": run_mm, "d2seg": run_d2}, args.train_rounds)
    return summarize(times)


def markdown(results, args, load_before, load_after) -> str:
    m = results["machine"]
    out = [
        f"Machine: {m['cpu']} ({m['cpu_count']} cores), torch {m['torch']}, {m['threads']} "
        f"threads, fp32; load average (1/5/15 min) before {load_before}, after {load_after}.",
        f"d2seg options: BN folded for inference, MODEL.SPEED.WINOGRAD={args.winograd!r}, "
        f"FUSED_ATTENTION={not args.no_fused_attention}, GEMM_1X1={not args.no_gemm_1x1}, "
        f"FOLD_PROJECTIONS={not args.no_fold_projections}, "
        f"CHANNELS_LAST={args.channels_last}. Input {args.input_size[0]}x{args.input_size[1]}; "
        f"train batch {args.train_batch}. Medians of {args.rounds} (inference) / "
        f"{args.train_rounds} (train) interleaved rounds ({args.clock} clock); ratio = d2seg / "
        "mmseg.",
        "",
        "| model | mmseg inf. s | d2seg inf. s | ratio | mmseg train s/iter | d2seg train "
        "s/iter | ratio | max abs dlogit plain / optimised (logit scale) | same argmax |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        inf, tr = r.get("inference"), r.get("train")
        cells = [name]
        if inf and "error" not in inf:
            cells += [f"{inf['mmseg']:.2f}", f"{inf['d2seg']:.2f}", f"**{inf['ratio']:.2f}**"]
        else:
            cells += [inf["error"] if inf else "-", "", ""]
        if tr and "error" not in tr:
            cells += [f"{tr['mmseg']:.2f}", f"{tr['d2seg']:.2f}", f"**{tr['ratio']:.2f}**"]
        else:
            cells += [tr["error"] if tr else "-", "", ""]
        if inf and "error" not in inf:
            cells += [f"{inf['max_dlogit_plain']:.1e} / {inf['max_dlogit_opt']:.1e} "
                      f"({inf['logit_scale']:.1f})", f"{100 * inf['same_argmax']:.3f} %"]
        else:
            cells += ["", ""]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def markdown_deploy(results, args) -> str:
    """The inference table with ONNX Runtime as a third side (``--onnx``)."""
    m = results["machine"]
    out = [
        f"Machine: {m['cpu']} ({m['cpu_count']} cores), torch {m['torch']}, {m['threads']} "
        f"threads, fp32, allocator {m['allocator']}; load average (1/5/15 min) before "
        f"{results['load_before']}, after {results['load_after']}. Input "
        f"{args.input_size[0]}x{args.input_size[1]}; medians of {args.rounds} interleaved rounds "
        f"after {args.warmup} warm-up ({args.clock} clock).",
        "",
        "| model | mmseg s | d2seg s | ORT s | d2seg / mmseg | ORT / mmseg | ORT / d2seg "
        "| max abs dlogit vs mmseg: d2seg / ORT (logit scale) | same argmax as mmseg: d2seg / ORT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        inf = r.get("inference")
        if not inf or "error" in inf:
            out.append(f"| {name} | {inf['error'] if inf else '-'} |  |  |  |  |  |  |  |")
            continue
        out.append(
            f"| {name} | {inf['mmseg']:.2f} | {inf['d2seg']:.2f} | {inf['onnxruntime_s']:.2f} | "
            f"{inf['ratio']:.2f} | {inf['ratio_onnxruntime']:.2f} | "
            f"**{inf['ratio_onnxruntime_vs_d2seg']:.2f}** | {inf['max_dlogit_opt']:.1e} / "
            f"{inf['max_dlogit_onnxruntime']:.1e} ({inf['logit_scale']:.1f}) | "
            f"{100 * inf['same_argmax']:.3f} % / {100 * inf['same_argmax_onnxruntime']:.3f} % |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", default=None,
                   help="subset of names (default: the 13 methods; --modern: the transformers)")
    p.add_argument("--modern", action="store_true",
                   help="the transformer families' table (SegFormer, Swin, ConvNeXt, DeiT, ViT; "
                        "use --input-size 512 512)")
    p.add_argument("--tasks", nargs="*", default=["inference", "train"],
                   choices=["inference", "train"])
    p.add_argument("--input-size", type=int, nargs=2, default=[512, 1024], metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timed inference rounds per model")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--train-rounds", type=int, default=3)
    p.add_argument("--train-warmup", type=int, default=1)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--winograd", default="F4", choices=["", "F2", "F4"],
                   help="d2seg's MODEL.SPEED.WINOGRAD (F2: rounding like the direct conv, but "
                        "slower)")
    p.add_argument("--channels-last", choices=["no", "yes", "auto"], default="auto",
                   help="d2seg's MODEL.SPEED.CHANNELS_LAST (auto: HRNet models only)")
    p.add_argument("--no-gemm-1x1", action="store_true",
                   help="d2seg without MODEL.SPEED.GEMM_1X1")
    p.add_argument("--no-fold-projections", action="store_true",
                   help="d2seg without MODEL.SPEED.FOLD_PROJECTIONS")
    p.add_argument("--no-fused-attention", action="store_true",
                   help="d2seg without MODEL.SPEED.FUSED_ATTENTION")
    p.add_argument("--onnx", action="store_true",
                   help="inference: also time ONNX Runtime (CPU EP) on d2seg's exported graph "
                        "(needs pip install d2seg[deploy]); prints the deployment table")
    p.add_argument("--no-psamask-build", action="store_true",
                   help="do not compile mmcv's PSAMask (PSANet is then skipped)")
    p.add_argument("--clock", choices=["wall", "process"], default="wall",
                   help="process = CPU time of the process (a proxy, less sensitive to other "
                        "processes; use with --threads 1); the table reports wall by default")
    p.add_argument("--output", help="also write the markdown table here")
    p.add_argument("--json", help="also write all measurements (JSON) here")
    args = p.parse_args()

    try:
        import mmcv  # noqa: F401
        stub = stub_mmcv_ext()
        import mmseg.models  # noqa: F401
    except ImportError as e:
        print(f"MMSegmentation is not installed ({e}): nothing to compare. Install it for the "
              "comparison only (see docs/benchmark.md), e.g. tools/install_test_deps.sh.")
        return 0
    import d2seg  # noqa: F401

    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    entries = [m + (None,) for m in MODELS] + MODERN
    names = args.models or [m[0] for m in (MODERN if args.modern else MODELS)]
    have_psamask = "PSANet" in names and not args.no_psamask_build and build_mmcv_psamask(stub)
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = {"machine": machine_info("cpu"), "args": vars(args), "models": {}}
    # every model's inference first, then the training steps: a process that has trained holds
    # warm (already faulted-in) heap memory, which would change the inference regime mid-table
    for task in args.tasks:
        for name, stem, yaml, opts in entries:
            if name not in names:
                continue
            r = results["models"].setdefault(name, {})
            if name == "PSANet" and not have_psamask:
                r[task] = {"error": "mmcv PSAMask kernel unavailable"}
                continue
            fn = bench_inference if task == "inference" else bench_train
            try:
                r[task] = fn(name, stem, yaml, args, opts)
            except Exception as e:  # report and go on with the next model
                r[task] = {"error": f"{type(e).__name__}: {e}"[:120]}
            gc.collect()
            print(f"{name} {task}: {json.dumps(r[task])}", file=sys.stderr, flush=True)
    load_after = [round(x, 2) for x in os.getloadavg()]
    results["load_before"], results["load_after"] = load_before, load_after
    table = markdown_deploy(results, args) if args.onnx else \
        markdown(results, args, load_before, load_after)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
