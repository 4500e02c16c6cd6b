#!/usr/bin/env python
"""Prints docs/deployment.md's CamVid table from what dev/camvid_deployment.sh wrote under --out,
after timing each model's three forms on one CamVid test image in the same process:

    DETECTRON2_DATASETS=/path/with/CamVid python dev/camvid_deployment_table.py \
        fast_scnn_camvid stdc1_camvid ... [--out output/camvid] [--rounds 15] [--threads 2]

- mIoU on CamVid test (233 images): PyTorch from ``tools/train_net.py --eval-only``'s log, ONNX
  Runtime fp32 / INT8 from ``tools/evaluate_deployed.py``'s metrics.json (the same evaluator);
- latency: ms per image, median over ``--rounds`` rounds in which PyTorch (d2seg's model with
  ``optimize_for_inference``, the image normalised inside as in the graph), ORT fp32 and ORT
  INT8 take turns in blocks (A-B-C, then C-B-A; each block 3 untimed runs then 5 timed ones:
  ``d2seg.utils.timing.interleaved_blocks``), ``--threads`` intra-op threads each, on the first
  test image after the config's test resize (360 x 480; LR-ASPP: 392 x 523);
- where the script also wrote the OpenVINO route (``<name>/openvino/model_int8.xml`` and
  ``eval_openvino_int8/``), a second table with its mIoU and its time in the same rounds.
"""
import argparse
import json
import os
import statistics
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from d2seg.utils.timing import interleaved_blocks  # noqa: E402


def read_pytorch_miou(log_path):
    """mIoU from Detectron2's ``copypaste:`` lines (header row then values)."""
    lines = [ln.split("copypaste: ", 1)[1].strip() for ln in open(log_path) if "copypaste: " in ln]
    for header, values in zip(lines, lines[1:]):
        if header.startswith("mIoU,"):
            return float(values.split(",")[0])
    raise ValueError(f"{log_path}: no mIoU copypaste line")


def time_model(name, out, rounds, threads):
    import onnxruntime as ort
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from d2seg.checkpoint import SegCheckpointer
    from d2seg.data.mappers.semseg_mapper import SemSegDatasetMapper
    from detectron2.config import get_cfg

    from d2seg.config import add_d2seg_config
    from d2seg.modeling.speed import optimize_for_inference

    cfg = get_cfg()
    add_d2seg_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "camvid", name + ".yaml"))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    SegCheckpointer(model).load(os.path.join(out, name, "model_final.pth"))
    model = optimize_for_inference(model.eval(), model.speed)
    record = SemSegDatasetMapper(cfg, is_train=False)(DatasetCatalog.get("camvid_sem_seg_test")[0])
    image = record["image"]  # uint8 C x H x W, INPUT.FORMAT (RGB), after the test resize
    inputs = [{"image": image}]
    rgb = image.float()[None].numpy() if cfg.INPUT.FORMAT == "RGB" else \
        image.flip(0).float()[None].numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(os.path.join(out, name, "onnx", f"{k}.onnx"), options,
                                        providers=["CPUExecutionProvider"])
                for k in ("model", "model_int8")}
    feed = {sessions["model"].get_inputs()[0].name: rgb}
    engines = {
        "pytorch": lambda: model(inputs)[0]["sem_seg"],
        "ort_fp32": lambda: sessions["model"].run(None, feed),
        "ort_int8": lambda: sessions["model_int8"].run(None, feed),
    }
    ir = os.path.join(out, name, "openvino", "model_int8.xml")
    if os.path.isfile(ir):  # the OpenVINO route (export_model.py --int8-backend openvino)
        from d2seg.export.openvino_int8 import OpenVinoRunner

        openvino = OpenVinoRunner(ir, threads)
        engines["ov_int8"] = lambda: openvino(rgb)
    torch.set_num_threads(threads)
    with torch.no_grad():
        times = interleaved_blocks(engines, rounds=rounds)
    seconds = {k: statistics.median(v) for k, v in times.items()}
    return seconds, tuple(image.shape[-2:]), sum(p.numel() for p in model.parameters())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+")
    p.add_argument("--out", default="output/camvid")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    import d2seg  # noqa: F401  (registers the datasets)

    rows, ov_rows, figures = [], [], {}
    for name in args.names:
        d = os.path.join(args.out, name)
        miou = {"pytorch": read_pytorch_miou(os.path.join(d, "eval_pytorch.log"))}
        for k in ("model", "model_int8"):
            with open(os.path.join(d, f"eval_{k}", "metrics.json")) as f:
                miou[k] = json.load(f)["sem_seg"]["mIoU"]
        with open(os.path.join(d, "onnx", "export.json")) as f:
            int8 = json.load(f)["int8"]
        ov_metrics = os.path.join(d, "eval_openvino_int8", "metrics.json")
        if os.path.isfile(ov_metrics):
            with open(ov_metrics) as f:
                miou["openvino_int8"] = json.load(f)["sem_seg"]["mIoU"]
        seconds, hw, params = time_model(name, args.out, args.rounds, args.threads)
        ms = {k: 1e3 * v for k, v in seconds.items()}
        figures[name] = {"miou": miou, "ms": ms, "input_hw": hw, "params": params,
                         "argmax_agreement": int8.get("argmax_agreement"),
                         "convs": int8.get("convs")}
        rows.append(
            f"| {name} | {params / 1e6:.2f} M | {hw[0]} x {hw[1]} | {miou['pytorch']:.2f} | "
            f"{miou['model']:.2f} | {miou['model_int8']:.2f} | "
            f"{miou['model_int8'] - miou['model']:+.2f} | {ms['pytorch']:.1f} | "
            f"{ms['ort_fp32']:.1f} | {ms['ort_int8']:.1f} | "
            f"{ms['ort_int8'] / ms['ort_fp32']:.2f}x | {1e3 / min(ms.values()):.1f} |")
        if "ov_int8" in ms and "openvino_int8" in miou:
            ov_rows.append(
                f"| {name} | {miou['model']:.2f} | {miou['openvino_int8']:.2f} | "
                f"{miou['openvino_int8'] - miou['model']:+.2f} | {ms['ort_fp32']:.1f} | "
                f"{ms['ort_int8']:.1f} | {ms['ov_int8']:.1f} | "
                f"{ms['ov_int8'] / ms['ort_fp32']:.2f}x | {ms['ov_int8'] / ms['ort_int8']:.2f}x |")
        print(f"{name}: {json.dumps(figures[name])}", file=sys.stderr, flush=True)
    load = [round(x, 2) for x in os.getloadavg()]
    print(f"{args.threads} threads, medians of {args.rounds} interleaved rounds of blocks; load "
          f"average after: {load}\n")
    print("| model | params | input | mIoU PyTorch fp32 | mIoU ORT fp32 | mIoU ORT INT8 | "
          "INT8 - fp32 | ms PyTorch | ms ORT fp32 | ms ORT INT8 | INT8 / fp32 time | "
          "images/s (fastest) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if ov_rows:
        print("\nThe OpenVINO route (model_int8.xml), timed in the same rounds:\n")
        print("| model | mIoU ORT fp32 | mIoU OpenVINO INT8 | OV INT8 - fp32 | ms ORT fp32 | "
              "ms ORT INT8 | ms OpenVINO INT8 | OV INT8 / ORT fp32 time | OV INT8 / ORT INT8 "
              "time |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(ov_rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
