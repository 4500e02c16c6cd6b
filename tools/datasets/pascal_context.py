#!/usr/bin/env python
"""Pascal Context labels (``VOC2010/SegmentationClassContext/*.png``: 0 = background, 1..59 =
the 59 classes) and splits (``VOC2010/ImageSets/SegmentationContext/{train,val}.txt``), as
mmseg's tools/convert_datasets/pascal_context.py.

    python tools/datasets/pascal_context.py $DETECTRON2_DATASETS/VOCdevkit --json trainval_merged.json
    python tools/datasets/pascal_context.py $DETECTRON2_DATASETS/VOCdevkit --mat-dir trainval

``--json``: the PASCAL in Detail ``trainval_merged.json`` that mmseg reads through the Detail API.
This tool reads it without the Detail API (not on PyPI): each image's segmentation annotations
are decoded (COCO run-length encoding, pycocotools) and painted in file order with their
category id, exactly as Detail's ``getMask``; the ids are then mapped to 0..59 with mmseg's table
(an id outside it is an error, as in mmseg). Splits come from each image's ``phase``.
``--mat-dir``: the original Pascal Context release (``trainval/<image>.mat`` with a ``LabelMap``
of the 459 full-set ids); the 59 classes map to 1..59 and every other id to background (0), the
usual 59-class reduction. Splits: VOC2010's ``ImageSets/Main/{train,val}.txt``. mmseg's numbers
are reported on the json labels.
"""
import argparse
import functools
import json
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_common_args, convert_all, fail, need, save_png, write_lines  # noqa: E402

# mmseg's _mapping: the full-set category ids of background (0) and the 59 classes, sorted; the
# k-th is class k of PascalContextDataset.
MAPPING = np.sort(np.array([
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162,
    420, 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72,
    458, 34, 207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115,
]))
_LUT = np.zeros(max(MAPPING.max() + 1, 512), np.int64)  # --mat-dir: other ids -> background
_LUT[MAPPING] = np.arange(len(MAPPING))


def class_to_index(mask: np.ndarray, where: str) -> np.ndarray:
    """mmseg's _class_to_index: full-set ids -> 0..59; every id must be one of the 60."""
    values = np.unique(mask)
    unknown = values[~np.isin(values, MAPPING)]
    if unknown.size:
        raise ValueError(f"{where}: category ids {unknown.tolist()[:10]} are not among the 59 "
                         "Pascal Context classes (is this trainval_merged.json?)")
    return np.digitize(mask.ravel(), MAPPING, right=True).reshape(mask.shape).astype(np.uint8)


# ---- json (PASCAL in Detail) -----------------------------------------------------------------
def _decode(segmentation, h, w):
    from pycocotools import mask as mask_utils

    rle = segmentation
    if isinstance(rle, dict) and isinstance(rle.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(rle, h, w)
    elif isinstance(rle, dict) and isinstance(rle.get("counts"), str):
        rle = dict(rle, counts=rle["counts"].encode("ascii"))
    elif isinstance(rle, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(rle, h, w))
    return mask_utils.decode(rle)


def convert_json_image(item, out_dir):
    img, anns = item
    mask = np.zeros((img["height"], img["width"]))
    for ann in anns:  # Detail.getMask: later annotations paint over earlier ones
        mask[np.nonzero(_decode(ann["segmentation"], img["height"], img["width"]))] = ann["category_id"]
    label = class_to_index(mask, img["file_name"])
    save_png(label, os.path.join(out_dir, os.path.splitext(img["file_name"])[0] + ".png"))


def json_items(json_path):
    with open(json_path) as f:
        data = json.load(f)
    for key in ("images", "annos_segmentation"):
        if key not in data:
            fail(f"{json_path!r} has no {key!r}: not the PASCAL in Detail trainval_merged.json")
    anns = defaultdict(list)
    for ann in data["annos_segmentation"]:
        anns[ann["image_id"]].append(ann)
    splits = {"train": [], "val": []}
    items = []
    for img in data["images"]:
        if img.get("phase") in splits:
            splits[img["phase"]].append(os.path.splitext(img["file_name"])[0])
            items.append((img, anns[img["image_id"]]))
    return items, splits


# ---- mat (original release) ------------------------------------------------------------------
def convert_mat(stem, mat_dir, out_dir):
    from scipy.io import loadmat

    label_map = np.asarray(loadmat(os.path.join(mat_dir, stem + ".mat"))["LabelMap"])
    if label_map.min() < 0 or label_map.max() >= len(_LUT):
        raise ValueError(f"{stem}.mat: LabelMap values outside 0..{len(_LUT) - 1}")
    save_png(_LUT[label_map].astype(np.uint8), os.path.join(out_dir, stem + ".png"))


def read_list(path):
    if not os.path.isfile(path):
        fail(f"{path!r} does not exist")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("devkit_path", help="VOCdevkit (holding VOC2010/)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--json", help="PASCAL in Detail trainval_merged.json (mmseg's source)")
    src.add_argument("--mat-dir", help="Pascal Context trainval/ folder of <image>.mat")
    p.add_argument("-o", "--out-dir", help="default: VOC2010/SegmentationClassContext")
    add_common_args(p)
    args = p.parse_args(argv)

    voc = os.path.join(args.devkit_path, "VOC2010")
    if not os.path.isdir(os.path.join(voc, "JPEGImages")):
        fail(f"{os.path.join(voc, 'JPEGImages')!r} does not exist: extract "
             "VOCtrainval_03-May-2010.tar into the VOCdevkit's parent first")
    out_dir = args.out_dir or os.path.join(voc, "SegmentationClassContext")
    spec = {"tool": "pascal_context", "source": "json" if args.json else "mat"}
    if args.json:
        if not os.path.isfile(args.json):
            fail(f"{args.json!r} does not exist")
        try:
            import pycocotools.mask  # noqa: F401
        except ImportError:
            fail("--json needs pycocotools (`pip install pycocotools`) to decode the masks")
        items, splits = json_items(args.json)
        output_of = lambda it: os.path.join(  # noqa: E731
            out_dir, os.path.splitext(it[0]["file_name"])[0] + ".png")
        convert = functools.partial(convert_json_image, out_dir=out_dir)
    else:
        if not os.path.isdir(args.mat_dir):
            fail(f"{args.mat_dir!r} does not exist")
        need("scipy.io", "tools/datasets/pascal_context.py --mat-dir")
        splits = {s: read_list(os.path.join(voc, "ImageSets", "Main", f"{s}.txt")) for s in ("train", "val")}
        items = sorted(splits["train"] + splits["val"])
        missing = [s for s in items if not os.path.isfile(os.path.join(args.mat_dir, s + ".mat"))]
        if missing:
            fail(f"{len(missing)} images of VOC2010 train/val have no .mat in {args.mat_dir!r}: "
                 f"{missing[:5]}")
        output_of = lambda s: os.path.join(out_dir, s + ".png")  # noqa: E731
        convert = functools.partial(convert_mat, mat_dir=args.mat_dir, out_dir=out_dir)
    if not items:
        fail("no train/val images found")
    convert_all(items, output_of, convert, marker=os.path.join(out_dir, ".d2seg_prepared.json"),
                spec=spec, force=args.force, desc="SegmentationClassContext", nproc=args.nproc)
    sets = os.path.join(voc, "ImageSets", "SegmentationContext")
    for split, stems in splits.items():
        path = os.path.join(sets, f"{split}.txt")
        stems = sorted(stems)
        if os.path.isfile(path) and not args.force:
            if sorted(read_list(path)) != stems:
                fail(f"{path!r} exists with other contents; --force replaces it")
            continue
        write_lines(path, stems)
    print(f"train: {len(splits['train'])}, val: {len(splits['val'])} images listed in {sets}")


if __name__ == "__main__":
    main()
