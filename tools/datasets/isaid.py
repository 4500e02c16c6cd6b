#!/usr/bin/env python
"""iSAID: the official images and semantic masks cut into 896x896 patches (overlap 384) with
class-id labels, as mmseg's tools/convert_datasets/isaid.py.

    python tools/datasets/isaid.py /path/to/iSAID_download -o $DETECTRON2_DATASETS/iSAID

The download (DOTA images, iSAID masks) is ``{train,val,test}/images/*.zip`` (``images/P<n>.png``)
and ``{train,val}/Semantic_masks/*.zip`` (``images/P<n>_instance_color_RGB.png``). Patches go to
``img_dir/{train,val}/P<n>_<y0>_<y1>_<x0>_<x1>.png`` and
``ann_dir/{train,val}/P<n>_<y0>_<y1>_<x0>_<x1>_instance_color_RGB.png``; the test images are
copied unchanged into ``img_dir/test``. As mmseg: an image smaller than a patch is padded at the
bottom / right (images with 0, labels with 255), the windows step by ``patch - overlap`` and the
last one is aligned with the border, a mask colour becomes its class by exact match with the
iSAID palette (0 for any other colour). The archives are read, not extracted.
"""
import argparse
import functools
import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _archive import member_size, read_member, zip_names  # noqa: E402
from _common import (SourceError, add_common_args, convert_all, fail, read_image,  # noqa: E402
                     save_bytes, save_png)


def colors_to_ids(rgb: np.ndarray) -> np.ndarray:
    """mmseg's iSAID_convert_from_color: the class whose palette colour the pixel has, else 0."""
    from d2seg.data.datasets.isaid import ISAID_COLORS

    out = np.zeros(rgb.shape[:2], np.uint8)
    for idx, color in enumerate(ISAID_COLORS):
        out[np.all(rgb == np.asarray(color, rgb.dtype), axis=-1)] = idx
    return out


def padded_size(h, w, ph, pw):
    """mmseg's padding: only when a side is smaller than the patch and the other is not equal
    to it (its strict comparisons, kept: the grids then come out the same)."""
    if h < ph and w > pw:
        return ph, w
    if h > ph and w < pw:
        return h, pw
    if h < ph and w < pw:
        return ph, pw
    return h, w


def windows(h, w, ph, pw, overlap):
    """mmseg's patch windows (y0, y1, x0, x1) of a (padded) h x w image, duplicates dropped."""
    out = []
    for x in range(0, w, pw - overlap):
        for y in range(0, h, ph - overlap):
            x0, x1 = (x, x + pw) if x + pw <= w else (w - pw, w)
            y0, y1 = (y, y + ph) if y + ph <= h else (h - ph, h)
            if (y0, y1, x0, x1) not in out:
                out.append((y0, y1, x0, x1))
    return out


def patch_path(out_dir, item, win):
    zip_path, member, split, is_label = item
    stem = os.path.basename(member).split(".")[0]
    box = "_".join(map(str, win))
    if is_label:  # mmseg: P<n>_instance_color_RGB.png -> P<n>_<box>_instance_color_RGB.png
        return os.path.join(out_dir, "ann_dir", split,
                            f"{stem.split('_')[0]}_{box}_instance_color_RGB.png")
    return os.path.join(out_dir, "img_dir", split, f"{stem}_{box}.png")


def convert(item, out_dir, ph, pw, overlap):
    zip_path, member, split, is_label = item
    data = read_member(zip_path, member)
    if split == "test":
        save_bytes(data, output_of(item, out_dir, ph, pw, overlap, None))
        return
    image = read_image(data, f"{zip_path}:{member}", "RGB")
    if is_label:
        image = colors_to_ids(image)
    h, w = padded_size(image.shape[0], image.shape[1], ph, pw)
    if (h, w) != image.shape[:2]:
        pad = [(0, h - image.shape[0]), (0, w - image.shape[1])] + [(0, 0)] * (image.ndim - 2)
        image = np.pad(image, pad, constant_values=255 if is_label else 0)
    for win in windows(h, w, ph, pw, overlap):  # the last patch is written last: "item done"
        y0, y1, x0, x1 = win  # (numpy slicing as mmseg's, also for its rare negative y0 / x0)
        save_png(image[y0:y1, x0:x1], patch_path(out_dir, item, win))


def output_of(item, out_dir, ph, pw, overlap, sizes):
    zip_path, member, split, is_label = item
    if split == "test":
        return os.path.join(out_dir, "img_dir", "test", os.path.basename(member))
    h, w = padded_size(*sizes[item], ph, pw)
    return patch_path(out_dir, item, windows(h, w, ph, pw, overlap)[-1])


def sources(dataset_path):
    items = []
    for split in ("train", "val", "test"):
        for folder, is_label in (("images", False), ("Semantic_masks", True)):
            if split == "test" and is_label:
                continue
            zips = sorted(glob.glob(os.path.join(dataset_path, split, folder, "*.zip")))
            if not zips:
                fail(f"no {os.path.join(dataset_path, split, folder, '*.zip')}: expected the "
                     "iSAID download layout (see the docstring)")
            for z in zips:
                items += [(z, n, split, is_label) for n in zip_names(z)
                          if n.startswith("images/") and n.count("/") == 1 and n.endswith(".png")]
    for split in ("train", "val"):
        images = {os.path.basename(i[1])[:-4] for i in items if i[2] == split and not i[3]}
        labels = {os.path.basename(i[1]).split("_")[0] for i in items if i[2] == split and i[3]}
        if images != labels:
            fail(f"{split}: images without a mask: {sorted(images - labels)[:5]}, masks without "
                 f"an image: {sorted(labels - images)[:5]} (an incomplete download?)")
    return items


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_path", help="holding {train,val,test}/images/*.zip and "
                   "{train,val}/Semantic_masks/*.zip")
    p.add_argument("-o", "--out-dir", required=True, help="e.g. $DETECTRON2_DATASETS/iSAID")
    p.add_argument("--patch-width", type=int, default=896)
    p.add_argument("--patch-height", type=int, default=896)
    p.add_argument("--overlap-area", type=int, default=384)
    add_common_args(p)
    args = p.parse_args(argv)
    if args.overlap_area >= min(args.patch_width, args.patch_height):
        fail("--overlap-area must be smaller than the patch")

    items = sources(args.dataset_path)
    ph, pw = args.patch_width, args.patch_height  # (mmseg's assignment, kept: H from --patch-width)
    marker = os.path.join(args.out_dir, ".d2seg_prepared.json")
    sizes = {}
    if not os.path.isfile(marker) or args.force:  # each image's size: where its patches end
        try:
            sizes = {i: member_size(i[0], i[1]) for i in items if i[2] != "test"}
        except SourceError as e:
            fail(str(e))
    kw = dict(out_dir=args.out_dir, ph=ph, pw=pw, overlap=args.overlap_area)
    convert_all(items, functools.partial(output_of, sizes=sizes, **kw),
                functools.partial(convert, **kw), marker=marker,
                spec={"tool": "isaid", "patch": [ph, pw], "overlap": args.overlap_area},
                force=args.force, desc="iSAID", nproc=args.nproc)


if __name__ == "__main__":
    main()
