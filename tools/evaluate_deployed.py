#!/usr/bin/env python
"""Evaluates an exported ONNX file (fp32 or INT8) with ONNX Runtime, or an INT8 OpenVINO IR
(model_int8.xml, tools/export_model.py --int8-backend openvino) with OpenVINO, as train_net.py
--eval-only evaluates the PyTorch model.

    python tools/evaluate_deployed.py --config-file CFG --model export/model.onnx \
        --output DIR [--dataset NAME] [--threads N] [KEY VALUE ...]

The config's test pipeline and evaluator (Trainer.build_test_loader, d2seg.evaluation's
build_evaluator; TEST.AUG's multi-scale + flip when enabled) run over DATASETS.TEST[0] (or
--dataset NAME); the file replaces the network (d2seg.export.onnx_runtime.OnnxSegmentor: the
normalisation is in the graph; slide windows and the resize back to the image's size are done
as the model does). Writes DIR/metrics.json (Detectron2's results dict, {"sem_seg": {"mIoU":
...}}), prints the same table as train_net.py and the latency in ONNX Runtime (ms per image).
MODEL.WEIGHTS is not read.
"""
import argparse
import json
import logging
import os
import sys
import time

from detectron2.utils.logger import setup_logger

import d2seg  # noqa: F401  (registers d2seg's datasets)
from d2seg.engine import Trainer, setup_cfg
from d2seg.export.onnx_runtime import OnnxSegmentor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="the config the file was exported from")
    p.add_argument("--model", required=True, help="the exported model.onnx (fp32 or INT8) or model_int8.xml (OpenVINO)")
    p.add_argument("--dataset", default="", help="registered dataset to evaluate (default: "
                   "DATASETS.TEST[0])")
    p.add_argument("--output", required=True, help="folder for metrics.json and the evaluator's "
                   "files")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime / OpenVINO threads (0: "
                   "its default)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Returns the results dict (also written to OUTPUT/metrics.json)."""
    args = parse_args(argv)
    opts = list(args.opts) + ["OUTPUT_DIR", args.output, "MODEL.DEVICE", "cpu"]
    if args.dataset:
        opts += ["DATASETS.TEST", (args.dataset,)]
    cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=opts), None)
    if not len(cfg.DATASETS.TEST):
        raise ValueError(f"{args.config_file}: DATASETS.TEST is empty: name one with --dataset")
    name = cfg.DATASETS.TEST[0]
    os.makedirs(args.output, exist_ok=True)
    for logger_name in ("detectron2", "d2seg"):
        if not logging.getLogger(logger_name).handlers:
            setup_logger(args.output, name=logger_name)
    model = OnnxSegmentor(args.model, cfg, threads=args.threads)
    if cfg.TEST.AUG.ENABLED and model.outputs_labels:
        raise ValueError(f"{args.model} outputs labels: TEST.AUG averages probabilities; "
                         "export without --labels or set TEST.AUG.ENABLED False")
    cfg.defrost()
    cfg.DATASETS.TEST = (name,)  # one dataset: Detectron2's results dict is not keyed by name
    cfg.freeze()
    start = time.perf_counter()
    if cfg.TEST.AUG.ENABLED:  # as train_net.py --eval-only: the augmented test only
        results = Trainer.test_with_TTA(cfg, model)
    else:
        results = Trainer.test(cfg, model)
    wall = time.perf_counter() - start
    results = {k: dict(v) for k, v in results.items()}
    path = os.path.join(args.output, "metrics.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)
    views = model.images
    images = views // max(1, len(cfg.TEST.AUG.RATIOS) * (2 if cfg.TEST.AUG.FLIP else 1)) \
        if cfg.TEST.AUG.ENABLED else views
    runtime = "OpenVINO" if args.model.lower().endswith(".xml") else "ONNX Runtime"
    print(f"{args.model} on {name}: {images} images, {runtime} (CPU, "
          f"{args.threads or 'default'} threads) {model.latency_ms() or 0:.1f} ms per "
          f"{'view' if cfg.TEST.AUG.ENABLED else 'image'}, "
          f"{1000 * wall / max(1, images):.1f} ms per image end to end")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
