#!/usr/bin/env python
"""Saves what the model is trained on: images with their label overlays, as PNGs.

    python tools/visualize_data.py --config-file CFG --output-dir OUT [--num 16] \
        [--source dataloader|annotation] [--dataset NAME] [KEY VALUE ...]

``dataloader`` (default): samples of DATASETS.TRAIN (or --dataset) through the training mapper
(resize, crop, flip, photometric distortion, labels read with the dataset's reduce_zero_label);
``annotation``: the original images and labels (labels after reduce_zero_label). Each PNG shows
the image and the label overlay (Detectron2's Visualizer; ignored pixels left uncoloured) side by
side.
"""
import argparse
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import convert_image_to_rgb
from detectron2.utils.visualizer import Visualizer

import d2seg  # noqa: F401  (registers the datasets)
from d2seg.data.datasets import dataset_metadata
from d2seg.data.mappers import SemSegDatasetMapper
from d2seg.engine import setup_cfg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--source", choices=["dataloader", "annotation"], default="dataloader")
    p.add_argument("--dataset", default="", help="default: the first of DATASETS.TRAIN")
    p.add_argument("--num", type=int, default=16, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="augmentation seed")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts), None)
    name = args.dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else "")
    if not name:
        p.error("no dataset: give --dataset NAME or set DATASETS.TRAIN")
    meta = dataset_metadata(name)
    dicts = DatasetCatalog.get(name)[: args.num]
    if args.source == "dataloader":
        mapper = SemSegDatasetMapper(cfg, is_train=True, dataset_names=[name])
    else:
        mapper = SemSegDatasetMapper(cfg, is_train=False, dataset_names=[name], augmentations=[])
    np.random.seed(args.seed)  # the augmentations draw from np.random (as mmseg's)
    os.makedirs(args.output_dir, exist_ok=True)
    written = []
    for i, d in enumerate(tqdm(dicts, desc="visualize", unit="img")):
        out = mapper(d)
        image = convert_image_to_rgb(out["image"].permute(1, 2, 0).numpy(), cfg.INPUT.FORMAT)
        image = np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8))
        label = out["sem_seg"].numpy()
        vis = Visualizer(image, meta).draw_sem_seg(label, alpha=args.alpha).get_image()
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        path = os.path.join(args.output_dir, f"{i:04d}_{stem}.png")
        Image.fromarray(np.concatenate([image, vis], axis=1)).save(path)
        written.append(path)
    print(f"wrote {len(written)} images ({args.source}, {name}) to {args.output_dir}")
    return written


if __name__ == "__main__":
    main()
