#!/usr/bin/env python
"""ISPRS Potsdam and Vaihingen: the official tiles cut into 512x512 PNG tiles with class-id
labels, as mmseg's tools/convert_datasets/potsdam.py and vaihingen.py.

    python tools/datasets/isprs.py potsdam   /path/to/zips -o $DETECTRON2_DATASETS/potsdam
    python tools/datasets/isprs.py vaihingen /path/to/zips -o $DETECTRON2_DATASETS/vaihingen

Potsdam: ``2_Ortho_RGB.zip`` and ``5_Labels_all_noBoundary.zip`` (``top_potsdam_<i>_<j>_*.tif``);
Vaihingen: ``ISPRS_semantic_labeling_Vaihingen.zip`` (``top/top_mosaic_09cm_area<k>.tif``) and
``ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip``
(``top_mosaic_09cm_area<k>_noBoundary.tif``). Tiles go to ``{img,ann}_dir/{train,val}/`` by
mmseg's split lists (a tile not in ``train`` is ``val``), named as mmseg names them. The tile
grid is mmseg's (which, despite the stride argument, steps by the tile size and aligns the last
tile with the border), and a label colour becomes its class as mmseg computes it: the colour's
``2 B + 3 G + 4 R`` compared with the palette's, 0 (ignored) for any other colour. The .tif are
read from the archives, not extracted.
"""
import argparse
import functools
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _archive import member_size, read_member, zip_names  # noqa: E402
from _common import (SourceError, add_common_args, convert_all, fail, read_image,  # noqa: E402
                     save_png)

SPLITS = {  # mmseg's; anything not in "train" goes to "val"
    "potsdam": ["2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10",
                "5_11", "5_12", "6_10", "6_11", "6_12", "6_7", "6_8", "6_9", "7_10", "7_11",
                "7_12", "7_7", "7_8", "7_9"],
    "vaihingen": ["area1", "area11", "area13", "area15", "area17", "area21", "area23", "area26",
                  "area28", "area3", "area30", "area32", "area34", "area37", "area5", "area7"],
}
# The label colours (RGB) of classes 0 (boundary, ignored) and 1..6 (ISPRS_COLORS).
LABEL_COLORS = [[0, 0, 0], [255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0],
                [255, 255, 0], [255, 0, 0]]


def colors_to_ids(rgb: np.ndarray) -> np.ndarray:
    """mmseg's colour -> class mapping: a pixel's key ``2 B + 3 G + 4 R`` (it reads BGR and
    weighs the channels 2, 3, 4) equal to a palette colour's key gives that class, else 0."""
    weights = np.array([4, 3, 2])  # R, G, B
    key = rgb[..., :3].astype(np.int64) @ weights
    out = np.zeros(key.shape, np.uint8)
    for idx, color in enumerate(LABEL_COLORS):
        out[key == np.dot(color, weights)] = idx
    return out


def tile_boxes(h: int, w: int, clip: int, stride: int):
    """mmseg's clip_big_image boxes (x0, y0, x1, y1), duplicates dropped (mmseg writes them
    twice, to the same file), in mmseg's order."""
    def count(n):
        k = math.ceil((n - clip) / stride)
        return k if k * stride + clip >= n else k + 1

    boxes = []
    for y in range(count(h) + 1):
        for x in range(count(w) + 1):
            x0, y0 = x * clip, y * clip
            x0 += (w - x0 - clip) if x0 + clip > w else 0
            y0 += (h - y0 - clip) if y0 + clip > h else 0
            box = (x0, y0, min(x0 + clip, w), min(y0 + clip, h))
            if box not in boxes:
                boxes.append(box)
    return boxes


def tile_prefix(kind: str, member: str) -> str:
    """``<i>_<j>`` (Potsdam) or ``area<k>`` (Vaihingen) from the tif's name, as mmseg takes it."""
    parts = os.path.basename(member).split("_")
    if kind == "potsdam":
        return "_".join(parts[2:4])
    return parts[3].strip(".tif")  # (mmseg's strip of the characters . t i f)


def sources(kind: str, dataset_path: str):
    """(zip, member, is_label) of every tif mmseg would convert, from the zips in dataset_path."""
    zips = sorted(f for f in os.listdir(dataset_path) if f.endswith(".zip"))
    if not zips:
        fail(f"no .zip in {dataset_path!r}: put the official archives there (see the docstring)")
    out = []
    for z in zips:
        path = os.path.join(dataset_path, z)
        tifs = [n for n in zip_names(path) if n.endswith(".tif")]
        top = [n for n in tifs if "/" not in n]
        if kind == "potsdam":  # mmseg: the tifs at the top, else in the first folder
            chosen = top or [n for n in tifs if n.count("/") == 1]
            out += [(path, n, "label" in n) for n in chosen]
        elif "ground_truth_eroded_COMPLETE" in z:  # (area9's ground truth has no image)
            out += [(path, n, "noBoundary" in n) for n in top if "area9" not in n]
        elif "ISPRS_semantic_labeling_Vaihingen" in z:
            out += [(path, n, "noBoundary" in n) for n in tifs if n.startswith("top/")
                    and n.count("/") == 1]
        else:
            out += [(path, n, "noBoundary" in n) for n in top]
    seen = {}
    for path, member, is_label in out:
        key = (tile_prefix(kind, member), is_label)
        if key in seen:
            fail(f"{path}:{member} and {seen[key]} give the same tiles; keep only mmseg's two "
                 "archives in the folder")
        seen[key] = f"{path}:{member}"
    if not any(label for *_, label in out) or all(label for *_, label in out):
        fail(f"{dataset_path!r} needs both the image and the label archive of {kind}")
    return out


def tile_path(out_dir, kind, item, box):
    path, member, is_label = item
    prefix = tile_prefix(kind, member)
    split = "train" if prefix in SPLITS[kind] else "val"
    return os.path.join(out_dir, "ann_dir" if is_label else "img_dir", split,
                        f"{prefix}_{box[0]}_{box[1]}_{box[2]}_{box[3]}.png")


def convert(item, out_dir, kind, clip, stride):
    path, member, is_label = item
    image = read_image(read_member(path, member), f"{path}:{member}", "RGB")
    if is_label:
        image = colors_to_ids(image)
    boxes = tile_boxes(image.shape[0], image.shape[1], clip, stride)
    for box in boxes:  # the last box's tile is written last: its existence marks the item done
        save_png(image[box[1]:box[3], box[0]:box[2]], tile_path(out_dir, kind, item, box))


def last_tile(item, out_dir, kind, clip, stride, sizes):
    h, w = sizes[item]
    return tile_path(out_dir, kind, item, tile_boxes(h, w, clip, stride)[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=sorted(SPLITS))
    p.add_argument("dataset_path", help="the folder holding the official zip archives")
    p.add_argument("-o", "--out-dir", required=True, help="e.g. $DETECTRON2_DATASETS/potsdam")
    p.add_argument("--clip-size", type=int, default=512, help="tile size (mmseg's default)")
    p.add_argument("--stride-size", type=int, default=256, help="mmseg's stride argument")
    add_common_args(p)
    args = p.parse_args(argv)

    items = sources(args.kind, args.dataset_path)
    marker = os.path.join(args.out_dir, ".d2seg_prepared.json")
    spec = {"tool": "isprs", "kind": args.kind, "clip": args.clip_size, "stride": args.stride_size}
    sizes = {}
    if not os.path.isfile(marker) or args.force:  # each tif's size: where its tiles end
        try:
            sizes = {item: member_size(*item[:2]) for item in items}
        except SourceError as e:
            fail(str(e))
    convert_all(items, functools.partial(last_tile, out_dir=args.out_dir, kind=args.kind,
                                         clip=args.clip_size, stride=args.stride_size, sizes=sizes),
                functools.partial(convert, out_dir=args.out_dir, kind=args.kind,
                                  clip=args.clip_size, stride=args.stride_size),
                marker=marker, spec=spec, force=args.force, desc=args.kind, nproc=args.nproc)


if __name__ == "__main__":
    main()
