#!/usr/bin/env python
"""Runs a trained d2seg model on images, folders, globs, a video or a webcam and writes overlays
with Detectron2's Visualizer.

    python tools/demo.py --config-file CFG --input IMG DIR 'glob/*.jpg' --output OUT \
        [--opacity 0.5] [--save-labels] [--max N] MODEL.WEIGHTS model_final.pth
    python tools/demo.py --config-file CFG --dataset NAME --output OUT [--max N] ...
    python tools/demo.py --config-file CFG --video-input FILE --output OUT ...   # OUT/FILE.mp4
    python tools/demo.py --config-file CFG --webcam --output OUT ...             # OUT/webcam.mp4
    python tools/demo.py --config-file CFG --model export/model.onnx --input ... # an exported file

Images go through ``d2seg.SemSegPredictor`` (the config's test pipeline, BN folded); with
``--model FILE.onnx`` the network is that exported file, run by ONNX Runtime (``--threads``).
``--input`` writes ``OUT/<name>_overlay.png`` (and ``<name>_label.png`` with --save-labels) at
the image's size; ``--dataset`` writes image | ground truth | prediction side by side, at least
512 px wide.
A video is read frame by frame and written as an mp4 of overlays (OpenCV). An input that cannot
be read is skipped with a message naming it; the exit status is 1 if any was skipped.
"""
import argparse
import glob
import os
import sys

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from detectron2.data import DatasetCatalog
from detectron2.utils.visualizer import ColorMode, Visualizer

import d2seg
from d2seg.data.datasets import dataset_metadata
from d2seg.data.image_io import read_label
from d2seg.engine import setup_cfg

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MIN_PANEL_WIDTH = 512  # side-by-side dataset overlays are upscaled to at least this width


def list_images(inputs):
    """Files of ``inputs`` (files, folders: their images, sorted; globs); a name that matches
    nothing raises, naming it."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(f for f in glob.glob(os.path.join(path, "*"))
                            if f.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(path):
            files.append(path)
        elif glob.has_magic(path) and glob.glob(path):
            files += sorted(f for f in glob.glob(path) if os.path.isfile(f))
        else:
            raise FileNotFoundError(f"--input {path}: no such file, folder or glob match")
    if not files:
        raise FileNotFoundError(f"--input {inputs}: no images found")
    return files


def read_rgb(path: str) -> np.ndarray:
    """H x W x 3 uint8 RGB; raises ValueError naming ``path`` for a non-image."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # not an image, truncated, unreadable
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def overlay(rgb: np.ndarray, labels: np.ndarray, meta, opacity: float) -> np.ndarray:
    vis = Visualizer(rgb, meta, instance_mode=ColorMode.IMAGE)
    return vis.draw_sem_seg(labels, alpha=opacity).get_image()


def side_by_side(panels, min_width: int = MIN_PANEL_WIDTH) -> np.ndarray:
    """Panels concatenated left to right, upscaled (nearest) to at least ``min_width``."""
    out = np.concatenate(panels, axis=1)
    if out.shape[1] < min_width:
        scale = -(-min_width // out.shape[1])
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", default=[], help="images, folders or globs")
    p.add_argument("--dataset", default="", help="or: the images of a registered dataset "
                   "(written as image | ground truth | prediction)")
    p.add_argument("--video-input", default="", help="or: a video file (written as an mp4)")
    p.add_argument("--webcam", action="store_true", help="or: the first camera (until Ctrl-C)")
    p.add_argument("--output", required=True, help="folder for the overlays")
    p.add_argument("--save-labels", action="store_true", help="also write the label PNGs")
    p.add_argument("--max", type=int, default=0, help="at most this many images/frames (0 = all)")
    p.add_argument("--opacity", "--alpha", dest="opacity", type=float, default=0.5,
                   help="overlay opacity")
    p.add_argument("--model", default="", help="an exported model.onnx (fp32 or INT8) to run "
                   "with ONNX Runtime instead of MODEL.WEIGHTS")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads with "
                   "--model (0: its default)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    sources = sum(map(bool, (args.input, args.dataset, args.video_input, args.webcam)))
    if sources != 1:
        p.error("give exactly one of --input, --dataset, --video-input and --webcam")
    return args


def run(argv=None):
    """Returns (written files, skipped inputs with their reasons)."""
    args = parse_args(argv)
    cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts), None)
    if not args.model and cfg.MODEL.WEIGHTS.lower().endswith(".onnx"):
        # an exported file given the way weights are: run it as --model would
        print(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} is an exported graph: running it with ONNX "
              "Runtime (as --model)")
        args.model = cfg.MODEL.WEIGHTS
    predictor = d2seg.SemSegPredictor(cfg, model_file=args.model, threads=args.threads)
    meta = dataset_metadata(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    os.makedirs(args.output, exist_ok=True)
    if args.video_input or args.webcam:
        return run_video(args, predictor, meta)

    gts = {}
    if args.dataset:
        dicts = DatasetCatalog.get(args.dataset)
        meta = dataset_metadata(args.dataset)
        files = [d["file_name"] for d in dicts]
        gts = {d["file_name"]: d for d in dicts if d.get("sem_seg_file_name")}
    else:
        files = list_images(args.input)
    if args.max:
        files = files[: args.max]
    written, skipped = [], []
    for path in tqdm(files, desc="demo", unit="img"):
        try:
            rgb = read_rgb(path)
        except ValueError as e:
            tqdm.write(f"skipped {e}")
            skipped.append(str(e))
            continue
        pred = predictor(rgb, input_format="RGB").cpu().numpy().astype(np.uint8)
        out = overlay(rgb, pred, meta, args.opacity)
        if path in gts:  # image | ground truth | prediction
            d = gts[path]
            gt = read_label(d["sem_seg_file_name"], d.get("reduce_zero_label", False))
            out = side_by_side([rgb, overlay(rgb, gt, meta, args.opacity), out])
        stem = os.path.splitext(os.path.basename(path))[0]
        dst = os.path.join(args.output, stem + "_overlay.png")
        Image.fromarray(out).save(dst)
        written.append(dst)
        if args.save_labels:
            Image.fromarray(pred).save(os.path.join(args.output, stem + "_label.png"))
    print(f"wrote {len(written)} overlays to {args.output}"
          + (f"; skipped {len(skipped)} unreadable input(s)" if skipped else ""))
    return written, skipped


def run_video(args, predictor, meta):
    """Frames of ``--video-input`` (or the webcam) -> an mp4 of overlays at the same rate."""
    source = args.video_input if args.video_input else 0
    name = "webcam" if args.webcam else os.path.splitext(os.path.basename(source))[0]
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        what = "no camera found" if args.webcam else "cannot open the video"
        msg = f"{args.video_input or 'webcam'}: {what} (OpenCV VideoCapture failed)"
        print(f"skipped {msg}", file=sys.stderr)
        return [], [msg]
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if args.max:
        total = min(total or args.max, args.max)
    dst = os.path.join(args.output, name + ".mp4")
    writer, frames = None, 0
    try:
        with tqdm(total=total, desc=name, unit="frame") as bar:
            while not args.max or frames < args.max:
                ok, bgr = cap.read()
                if not ok:
                    break
                rgb = bgr[:, :, ::-1]
                pred = predictor(bgr, input_format="BGR").cpu().numpy().astype(np.uint8)
                out = overlay(rgb, pred, meta, args.opacity)
                if writer is None:
                    writer = cv2.VideoWriter(dst, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (out.shape[1], out.shape[0]))
                writer.write(np.ascontiguousarray(out[:, :, ::-1]))
                frames += 1
                bar.update()
    except KeyboardInterrupt:  # the webcam runs until Ctrl-C
        pass
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        msg = f"{args.video_input or 'webcam'}: no frame could be decoded"
        print(f"skipped {msg}", file=sys.stderr)
        return [], [msg]
    print(f"wrote {frames} frames to {dst}")
    return [dst], []


def main(argv=None):
    """The written files (the exit status, from the command line, says whether any input was
    skipped)."""
    return run(argv)[0]


if __name__ == "__main__":
    sys.exit(1 if run()[1] else 0)
