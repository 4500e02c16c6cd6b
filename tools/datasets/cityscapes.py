#!/usr/bin/env python
"""Makes Cityscapes' ``*_gtFine_labelTrainIds.png`` (19 classes, 255 = ignore) next to the
``*_gtFine_labelIds.png`` / ``*_gtFine_polygons.json`` of ``gtFine/``, as mmseg's
tools/convert_datasets/cityscapes.py.

    python tools/datasets/cityscapes.py $DETECTRON2_DATASETS/cityscapes [--nproc 8] [--force]

``--method polygons`` draws them from the polygons with cityscapesscripts' json2labelImg (what
mmseg and Cityscapes' createTrainIdLabelImgs do; needs ``pip install cityscapesscripts``);
``--method lut`` maps the labelIds PNGs through the labelId -> trainId table (no dependency).
Both give the same labels: the labelIds PNGs are drawn from the same polygons. ``auto`` (the
default) uses polygons when cityscapesscripts is installed.
"""
import argparse
import functools
import glob
import importlib.util
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_common_args, convert_all, fail, save_png  # noqa: E402

SUFFIX = {"polygons": "_gtFine_polygons.json", "lut": "_gtFine_labelIds.png"}


def output_of(src: str, method: str) -> str:
    return src[: -len(SUFFIX[method])] + "_gtFine_labelTrainIds.png"


def convert_lut(src: str) -> None:
    from d2seg.data.datasets.cityscapes import label_ids_to_train_ids

    with Image.open(src) as img:
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{src}: a {img.mode} image, expected single-channel labelIds")
        ids = np.asarray(img)
    if ids.max() > 255:
        raise ValueError(f"{src}: values up to {ids.max()}, not labelIds (instanceIds?)")
    save_png(label_ids_to_train_ids(ids.astype(np.uint8)), output_of(src, "lut"))


def convert_polygons(src: str) -> None:
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    out = output_of(src, "polygons")
    d, base = os.path.split(out)
    tmp = os.path.join(d, f".{base[:-4]}.tmp{os.getpid()}.png")
    json2labelImg(src, tmp, "trainIds")
    os.replace(tmp, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cityscapes_path", help="the folder holding gtFine/ (and leftImg8bit/)")
    p.add_argument("--gt-dir", default="gtFine", help="annotation folder inside cityscapes_path")
    p.add_argument("--method", choices=["auto", "polygons", "lut"], default="auto")
    add_common_args(p)
    args = p.parse_args(argv)

    gt_dir = os.path.join(args.cityscapes_path, args.gt_dir)
    if not os.path.isdir(gt_dir):
        fail(f"{gt_dir!r} does not exist: expected <cityscapes>/{args.gt_dir}/<split>/<city>/ "
             "(unzip gtFine_trainvaltest.zip there)")
    has_scripts = importlib.util.find_spec("cityscapesscripts") is not None
    method = args.method
    if method == "auto":
        method = "polygons" if has_scripts else "lut"
    if method == "polygons" and not has_scripts:
        fail("--method polygons needs cityscapesscripts: pip install 'd2seg[datasets]', or use "
             "--method lut (same labels, from the labelIds PNGs)")
    sources = sorted(glob.glob(os.path.join(gt_dir, "**", "*" + SUFFIX[method]), recursive=True))
    if not sources:
        fail(f"no *{SUFFIX[method]} under {gt_dir!r}")
    convert = convert_polygons if method == "polygons" else convert_lut
    convert_all(
        sources, functools.partial(output_of, method=method), convert,
        marker=os.path.join(gt_dir, ".d2seg_labelTrainIds.json"),
        spec={"tool": "cityscapes", "method": method}, force=args.force,
        desc=f"labelTrainIds ({method})", nproc=args.nproc,
    )


if __name__ == "__main__":
    main()
