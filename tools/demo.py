#!/usr/bin/env python
"""Runs a trained d2seg model on images and writes overlays with Detectron2's Visualizer.

    python tools/demo.py --config-file configs/quickstart.yaml (--input IMG_OR_DIR [...] | --dataset NAME) \
        --output OUT_DIR [--save-labels] [--max N] MODEL.WEIGHTS output/quickstart/model_final.pth
"""
import argparse
import glob
import os

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer

import d2seg  # noqa: F401
from d2seg.checkpoint import SegCheckpointer
from d2seg.data.mappers import SemSegDatasetMapper
from d2seg.engine import setup_cfg
from d2seg.modeling import SemanticSegmentorWithTTA
from d2seg.modeling.speed import optimize_for_inference

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def list_images(inputs):
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"--input {inputs}: no images found")
    return files


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", default=[], help="images or folders")
    p.add_argument("--dataset", default="", help="or: the images of a registered dataset")
    p.add_argument("--output", required=True, help="folder for the overlay PNGs")
    p.add_argument("--save-labels", action="store_true", help="also write raw label PNGs")
    p.add_argument("--max", type=int, default=0, help="at most this many images (0 = all)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    if not args.input and not args.dataset:
        p.error("give --input images/folders or --dataset NAME")
    cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts), None)
    model = build_model(cfg).eval()
    SegCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    # inference only: BN folded into the convs (MODEL.SPEED.FUSE_BN) and the other MODEL.SPEED
    # options (docs/benchmark.md); outputs equal the plain model's within float rounding
    optimize_for_inference(model)
    mapper = SemSegDatasetMapper(cfg, is_train=False)
    if cfg.TEST.AUG.ENABLED:  # multi-scale + flip test: views are made from the original image
        model = SemanticSegmentorWithTTA(cfg, model)
        mapper = SemSegDatasetMapper(cfg, is_train=False, augmentations=[])
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")
    if args.dataset:
        files = [d["file_name"] for d in DatasetCatalog.get(args.dataset)]
        meta = MetadataCatalog.get(args.dataset)
    else:
        files = list_images(args.input)
    if args.max:
        files = files[: args.max]
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in tqdm(files, desc="demo", unit="img"):
        inp = mapper({"file_name": path})
        with torch.no_grad():
            pred = model([inp])[0]["sem_seg"].argmax(0).cpu().numpy().astype(np.uint8)
        rgb = np.asarray(Image.open(path).convert("RGB"))
        vis = Visualizer(rgb, meta, instance_mode=ColorMode.IMAGE)
        out = vis.draw_sem_seg(pred, alpha=args.alpha).get_image()
        stem = os.path.splitext(os.path.basename(path))[0]
        dst = os.path.join(args.output, stem + "_overlay.png")
        Image.fromarray(out).save(dst)
        written.append(dst)
        if args.save_labels:
            Image.fromarray(pred).save(os.path.join(args.output, stem + "_label.png"))
    print(f"wrote {len(written)} overlays to {args.output}")
    return written


if __name__ == "__main__":
    main()
