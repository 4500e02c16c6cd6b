#!/usr/bin/env python
"""Exports a d2seg model to ONNX, TorchScript or torch.export, then checks the file against PyTorch.

    python tools/export_model.py --config-file CFG --format {onnx,torchscript,torch-export} \
        --output DIR [--height H --width W] [--batch B] [--dynamic] [--opset N] [--labels] \
        [KEY VALUE ...]   # e.g. MODEL.WEIGHTS mmseg://pspnet/pspnet_r50-d8_512x1024_40k_cityscapes

Writes DIR/model.onnx (model.ts, model.pt2) and DIR/export.json. Input ``image``: float32
N x 3 x H x W, RGB, 0-255 (normalisation is in the graph). Output ``logits`` N x C x H x W, the
model's ``sem_seg``; with --labels, ``labels`` N x H x W int64 (the argmax). --dynamic makes N, H
and W dynamic. The exported network is the whole-mode one: for a slide-mode config, slide the
printed crop size over the image (docs/deployment.md). Before exiting 0 the tool runs the file
(ONNX Runtime for onnx) on random images at the export size and, with --dynamic, at a second
size and batch, and compares with PyTorch (max |d logit| <= 1e-4 x max(1, max |logit|), argmax
agreement >= 99.99% where the two best logits are apart); if that fails it deletes the file and
exits 1. --tolerance REL changes the 1e-4; --skip-verify reports the figures but writes the file
whatever they are. MODEL.SPEED's CPU kernels and compile, and
SOLVER.AMP's autocast, are switched off for the export; BN is folded into the convs.

--int8 --calib-dataset NAME [--calib-images N] (ONNX only) also writes DIR/model_int8.onnx: ONNX
Runtime static INT8 (QDQ) calibrated on N images of NAME read through the config's test pipeline,
then compared with model.onnx on other images of NAME (export.json's "int8": argmax agreement,
max |d logit|; d2seg/export/quantize.py, docs/deployment.md). With --int8-backend openvino it
writes DIR/model_int8.xml + .bin instead: an OpenVINO IR quantised by NNCF (the faster route on
CPUs with AMX; d2seg/export/openvino_int8.py).
"""
import argparse
import json
import os
import sys

import torch

from detectron2.modeling import build_model

import d2seg  # noqa: F401  (registration)
from d2seg.checkpoint import SegCheckpointer
from d2seg.data.datasets import dataset_metadata
from d2seg.engine import setup_cfg
from d2seg.export.exporters import (
    FILE_NAMES, FORMATS, LOGIT_TOLERANCE, MIN_ARGMAX_AGREEMENT, MIN_OPSET, OPSET_NEEDS, export,
    remove_quietly, verify_export,
)
from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

# MODEL.SPEED options that put PyTorch-only code into the model (CPU kernels, compile, NHWC,
# fused attention): exported graphs never hold them; BN folding stays (plain_for_export)
PLAIN_SPEED = {"WINOGRAD": "", "GEMM_1X1": False, "COMPILE": False, "CHANNELS_LAST": False,
               "FOLD_PROJECTIONS": False, "FUSED_ATTENTION": False}


def export_cfg(config_file: str, opts):
    """The config with ``opts`` and the plain MODEL.SPEED (only keys the config has), on the
    CPU, without autocast (SOLVER.AMP.ENABLED False)."""
    cfg = setup_cfg(argparse.Namespace(config_file=config_file, opts=list(opts)), None)
    plain = ["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", False]
    for key, value in PLAIN_SPEED.items():
        if key in cfg.MODEL.SPEED:
            plain += [f"MODEL.SPEED.{key}", value]
    return setup_cfg(argparse.Namespace(config_file=config_file, opts=list(opts) + plain), None)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", required=True, help="folder for the model file and export.json")
    p.add_argument("--height", type=int, default=0, help="export height (default: the test "
                   "crop for slide configs, else INPUT.CROP.SIZE, else 512)")
    p.add_argument("--width", type=int, default=0, help="export width (same default)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamic", action="store_true", help="dynamic N, H and W")
    p.add_argument("--opset", type=int, default=17, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--labels", action="store_true", help="output the N x H x W argmax")
    # parity check against PyTorch (issue 22)
    p.add_argument("--tolerance", type=float, default=LOGIT_TOLERANCE, metavar="REL",
                   help="max |d logit| allowed, relative to max(1, max |logit|) (default "
                   f"{LOGIT_TOLERANCE:g})")
    p.add_argument("--skip-verify", action="store_true", help="report the parity figures but "
                   "write the file even if they fail the check")
    add_int8_args(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def export_size(cfg, args):
    if cfg.TEST.MODE == "slide":
        default = tuple(cfg.TEST.CROP_SIZE)
    elif cfg.INPUT.CROP.ENABLED:
        default = tuple(cfg.INPUT.CROP.SIZE)
    else:
        default = (512, 512)
    h, w = args.height or default[0], args.width or default[1]
    if min(h, w, args.batch) <= 0:
        raise ValueError(f"--height {h} --width {w} --batch {args.batch} must be positive")
    return h, w


def second_size(n: int, h: int, w: int):
    """The dynamic check's size: another batch and a height/width that are not multiples of 32
    (odd feature maps at every stride)."""
    return n + 1, max(33, (3 * h) // 4) | 1, max(33, (3 * w) // 4 + 2) | 1


def describe(cfg) -> str:
    heads = [cfg.MODEL.SEM_SEG_HEAD.NAME] + ([cfg.MODEL.CASCADE_HEAD.NAME]
                                             if cfg.MODEL.CASCADE_HEAD.NAME else [])
    return f"{cfg.MODEL.META_ARCHITECTURE} ({cfg.MODEL.BACKBONE.NAME}, {' + '.join(heads)})"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.format == "onnx" and args.opset < MIN_OPSET:
        print(f"error: --opset {args.opset} is too old for d2seg's graphs: they need opset >= "
              f"{MIN_OPSET} ({OPSET_NEEDS})", file=sys.stderr)
        return 2
    if not args.tolerance > 0:
        print(f"error: --tolerance {args.tolerance} must be positive", file=sys.stderr)
        return 2
    cfg = export_cfg(args.config_file, args.opts)
    if args.int8 and not check_int8_args(cfg, args):
        return 2
    h, w = export_size(cfg, args)
    model = build_model(cfg)
    if not hasattr(model, "encode_decode"):
        print(f"error: {describe(cfg)} has no encode_decode(): only EncoderDecoder models export",
              file=sys.stderr)
        return 2
    if cfg.MODEL.WEIGHTS:
        SegCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        print("warning: MODEL.WEIGHTS is empty: exporting random weights", file=sys.stderr)
    if cfg.TEST.MODE == "slide":
        print(f"note: {args.config_file} tests in slide mode; the exported graph is the "
              f"whole-mode network: run it on {cfg.TEST.CROP_SIZE[0]}x{cfg.TEST.CROP_SIZE[1]} "
              f"(h x w) windows with stride {cfg.TEST.STRIDE[0]}x{cfg.TEST.STRIDE[1]} and average "
              "the overlapping logits (docs/deployment.md)")
    if cfg.TEST.AUG.ENABLED:
        print("note: TEST.AUG (multi-scale + flip) is not in the graph: it exports one scale")
    module = SegmentationExportModule(plain_for_export(model), cfg.INPUT.FORMAT, args.labels)
    output_name = "labels" if args.labels else "logits"

    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, FILE_NAMES[args.format])
    example = torch.rand(args.batch, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    # written to a temporary name first: a failed export or check leaves no model file behind
    tmp = os.path.join(args.output, f".partial-{FILE_NAMES[args.format]}")
    try:
        export(module, args.format, tmp, example, dynamic=args.dynamic, opset=args.opset,
               output_name=output_name)
        sizes = [(args.batch, h, w)] + ([second_size(args.batch, h, w)] if args.dynamic else [])
        ok, figures = verify_export(module, args.format, tmp, sizes, tolerance=args.tolerance)
    except Exception as e:
        remove_quietly(tmp)
        print(f"error: exporting {describe(cfg)} from {args.config_file} to {args.format} "
              f"failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    for size, fig in figures.items():
        print(f"parity {size}: " + ", ".join(f"{k} {v:.3g}" for k, v in fig.items()))
    limits = (f"limits: max |d logit| <= {args.tolerance:g} x max(1, max |logit|), argmax "
              f"agreement >= {MIN_ARGMAX_AGREEMENT:.2%} where the two best logits are apart")
    if not ok and not args.skip_verify:
        remove_quietly(tmp)
        print(f"error: the exported {args.format} model differs from PyTorch ({limits}); "
              "nothing written (--tolerance REL or --skip-verify to accept it)", file=sys.stderr)
        return 1
    if args.skip_verify:
        print(f"warning: --skip-verify: the parity check was not enforced ({limits}: "
              f"{'passed' if ok else 'FAILED'})", file=sys.stderr)
    args.parity_passed = ok
    os.replace(tmp, path)
    info = export_info(cfg, args, (h, w), output_name, figures)
    int8_failed = args.int8 and not add_int8(cfg, args, path, info)
    with open(os.path.join(args.output, "export.json.tmp"), "w") as f:
        json.dump(info, f, indent=2)
    os.replace(os.path.join(args.output, "export.json.tmp"), os.path.join(args.output,
                                                                         "export.json"))
    print(f"wrote {path} and {os.path.join(args.output, 'export.json')}")
    return 1 if int8_failed else 0


def export_info(cfg, args, size, output_name, figures) -> dict:
    meta = dataset_metadata(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    mean, std = list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)
    if cfg.INPUT.FORMAT == "BGR":  # the graph takes RGB: report its statistics in RGB order
        mean, std = mean[::-1], std[::-1]
    n, c = "batch" if args.dynamic else args.batch, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    hw = ["height", "width"] if args.dynamic else list(size)
    info = {
        "format": args.format,
        "file": FILE_NAMES[args.format],
        "config_file": args.config_file,
        "config_overrides": list(args.opts),
        "config": cfg.dump(),
        "weights": cfg.MODEL.WEIGHTS,
        "classes": list(getattr(meta, "stuff_classes", None) or []) if meta else [],
        "palette": [list(map(int, c)) for c in (getattr(meta, "stuff_colors", None) or [])]
        if meta else [],
        "num_classes": c,
        "input": {"name": "image", "shape": [n, 3, *hw], "dtype": "float32",
                  "layout": "NCHW", "channels": "RGB", "range": [0, 255]},
        "output": {"name": output_name, "dtype": "int64" if args.labels else "float32",
                   "shape": [n, *hw] if args.labels else [n, c, *hw]},
        "normalization_in_graph": {"mean_rgb": mean, "std_rgb": std},
        "export_size": list(size),
        "dynamic": args.dynamic,
        "test_mode": cfg.TEST.MODE,
        "slide_crop_size": list(cfg.TEST.CROP_SIZE) if cfg.TEST.MODE == "slide" else None,
        "slide_stride": list(cfg.TEST.STRIDE) if cfg.TEST.MODE == "slide" else None,
        "test_img_scale": list(cfg.INPUT.TEST_IMG_SCALE),
        # then resized (again) up to multiples of this; 0 = not (mmseg's ResizeToMultiple)
        "test_size_divisor": cfg.INPUT.TEST_SIZE_DIVISOR,
        "opset": args.opset if args.format == "onnx" else None,
        "torch": torch.__version__,
        "d2seg": d2seg.__version__,
        "parity": figures,  # per checked size: logit_scale, max_abs_diff, max_rel_diff, ...
        "parity_tolerance": args.tolerance,  # relative: max |d logit| / max(1, max |logit|)
        "parity_passed": args.parity_passed,
        "parity_enforced": not args.skip_verify,
    }
    if args.format == "onnx":
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info



# ---- --int8: static INT8 ONNX (issue 22; the work is d2seg/export/quantize.py) ----------------
def add_int8_args(p):
    p.add_argument("--int8", action="store_true", help="also write model_int8.onnx: static INT8 "
                   "(ONNX Runtime QDQ), calibrated on --calib-dataset through the test pipeline")
    p.add_argument("--calib-dataset", default="", metavar="NAME", help="registered dataset whose "
                   "images calibrate --int8 (e.g. the config's DATASETS.TRAIN[0])")
    p.add_argument("--calib-images", type=int, default=100, metavar="N",
                   help="calibration images, spread over the dataset (default 100)")
    p.add_argument("--calib-method", default="percentile",
                   choices=("percentile", "minmax", "entropy"), help="activation ranges "
                   "(default percentile; minmax calibrates ~10x faster: docs/deployment.md)")
    p.add_argument("--int8-check-images", type=int, default=20, metavar="N", help="other images "
                   "of the dataset on which model_int8.onnx is compared with model.onnx")
    p.add_argument("--int8-latency", type=int, default=0, metavar="ROUNDS", help="also time both "
                   "files at 2 threads (median of ROUNDS interleaved rounds)")
    p.add_argument("--int8-keep-float", action="append", default=[], metavar="REGEX",
                   help="also keep in float the nodes of model.onnx whose names this regular "
                   "expression finds (repeatable; e.g. '/decode_head/cca' for CCNet's "
                   "attention); the classifier and what follows it always are")
    p.add_argument("--int8-backend", default="onnxruntime", choices=("onnxruntime", "openvino"),
                   help="onnxruntime (default): model_int8.onnx, ONNX Runtime QDQ; openvino: "
                   "model_int8.xml/.bin, NNCF into an OpenVINO IR (pip install 'd2seg[openvino]'"
                   "; --calib-method does not apply)")


def check_int8_args(cfg, args) -> bool:
    """--int8's preconditions, each refused with a message (before anything is exported)."""
    problem = None
    if args.format != "onnx":
        problem = f"--int8 quantises the ONNX file: use --format onnx (not {args.format})"
    elif not args.calib_dataset:
        problem = "--int8 needs --calib-dataset NAME (a registered dataset, e.g. the training set)"
    elif min(args.calib_images, args.int8_check_images) <= 0 or args.int8_latency < 0:
        problem = (f"--calib-images {args.calib_images} and --int8-check-images "
                   f"{args.int8_check_images} must be positive, --int8-latency >= 0")
    else:
        from d2seg.export.quantize import calibration_dicts, require_onnxruntime

        try:
            require_onnxruntime()
            if args.int8_backend == "openvino":
                from d2seg.export.openvino_int8 import require_openvino

                require_openvino(quantize=True)
            calibration_dicts(args.calib_dataset, args.calib_images)
        except (ImportError, ValueError) as e:
            problem = str(e)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
    return problem is None


def add_int8(cfg, args, path, info) -> bool:
    """Writes model_int8.onnx next to ``path`` and puts its figures in ``info["int8"]``; False
    (with the error in ``info["int8"]`` and nothing half-written) if that fails."""
    from d2seg.export.quantize import quantize_and_verify

    # an OpenVINO IR is two files, the .bin found next to the .xml by its name
    suffixes = (".xml", ".bin") if args.int8_backend == "openvino" else (".onnx",)
    final = os.path.join(args.output, "model_int8" + suffixes[0])
    tmp = os.path.join(args.output, ".partial-model_int8" + suffixes[0])
    try:
        int8 = quantize_and_verify(cfg, path, tmp, args.calib_dataset, args.calib_images,
                                   args.int8_check_images, args.calib_method, args.int8_latency,
                                   backend=args.int8_backend, keep_float=args.int8_keep_float)
    except Exception as e:
        for suffix in (".onnx", ".xml", ".bin"):  # an older one would not match the new model
            remove_quietly(os.path.join(args.output, ".partial-model_int8" + suffix))
            remove_quietly(os.path.join(args.output, "model_int8" + suffix))
        info["int8"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"error: INT8 quantisation failed: {type(e).__name__}: {e}", file=sys.stderr)
        return False
    for suffix in (".onnx", ".xml", ".bin"):  # the other route's files would not match
        if suffix not in suffixes:
            remove_quietly(os.path.join(args.output, "model_int8" + suffix))
    for suffix in suffixes[1:] + suffixes[:1]:  # the .xml last: complete once it is there
        os.replace(tmp[:-len(suffixes[0])] + suffix, final[:-len(suffixes[0])] + suffix)
    int8["file"] = os.path.basename(final)
    info["int8"] = int8
    a, c = int8["agreement"], int8["convs"]
    print(f"int8: {final}: argmax agreement with model.onnx {a['argmax_agreement']:.4%} on "
          f"{int8['verification_images']} {'held-out' if int8['verification_held_out'] else ''}"
          f" images" + (f", max |d logit| {a['max_abs_diff']:.3g} (max |logit| "
                        f"{a['max_abs_logit']:.3g})" if "max_abs_diff" in a else "")
          + f"; {c['int8_convs']}/{c['fp32_convs']} convs run in int8"
          + (f"; ops on dequantised tensors: "
             f"{', '.join(f'{k} {v}' for k, v in c['float_ops'].items()) or 'none'}"
             if "float_ops" in c else ""))
    if "latency_s" in int8:
        t = int8["latency_s"]
        print(f"int8: latency at 2 threads {t['fp32'] * 1e3:.1f} ms fp32, {t['int8'] * 1e3:.1f} "
              f"ms int8 ({t['fp32'] / t['int8']:.2f}x)")
    return True


if __name__ == "__main__":
    sys.exit(main())
