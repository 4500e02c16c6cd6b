#!/usr/bin/env python
"""LoveDA's official ``Train.zip``, ``Val.zip`` (and ``Test.zip``) laid out as mmseg's
tools/convert_datasets/loveda.py does: ``img_dir/{train,val,test}/*.png`` and
``ann_dir/{train,val}/*.png``, the Rural and Urban scenes together, files unchanged.

    python tools/datasets/loveda.py /path/to/zips -o $DETECTRON2_DATASETS/loveDA [--nproc 8]

The files are copied straight out of the archives (no temporary extraction), each atomically.
``Test.zip`` (images without labels, for the online benchmark) is optional here.
"""
import argparse
import functools
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _archive import extract_member, zip_names  # noqa: E402
from _common import add_common_args, convert_all, fail  # noqa: E402

# <Split>/<Rural|Urban>/<images_png|masks_png>/<name>.png inside <Split>.zip
MEMBER = re.compile(r"^(Train|Val|Test)/(Rural|Urban)/(images_png|masks_png)/([^/]+\.png)$")


def items_of(zip_path, split):
    items = []
    for name in zip_names(zip_path):
        m = MEMBER.match(name)
        if m is None or m.group(1) != split:
            continue
        if split == "Test" and m.group(3) == "masks_png":
            continue  # as mmseg: the test set has no labels
        folder = "img_dir" if m.group(3) == "images_png" else "ann_dir"
        items.append((zip_path, name, os.path.join(folder, split.lower(), m.group(4))))
    if not any(i[2].startswith("img_dir") for i in items):
        fail(f"{zip_path}: no {split}/{{Rural,Urban}}/images_png/*.png inside; is it LoveDA's "
             f"{split}.zip?")
    if split != "Test" and not any(i[2].startswith("ann_dir") for i in items):
        fail(f"{zip_path}: no {split}/{{Rural,Urban}}/masks_png/*.png inside (a partial download?)")
    return items


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset_path", help="the folder holding Train.zip, Val.zip (and Test.zip)")
    p.add_argument("-o", "--out-dir", required=True, help="e.g. $DETECTRON2_DATASETS/loveDA")
    add_common_args(p)
    args = p.parse_args(argv)

    items = []
    for split in ("Train", "Val", "Test"):
        zip_path = os.path.join(args.dataset_path, split + ".zip")
        if split == "Test" and not os.path.isfile(zip_path):
            print(f"{zip_path} not found: img_dir/test is not made (it is not used for training "
                  "or validation).")
            continue
        items += items_of(zip_path, split)
    targets = {}
    for zip_path, member, rel in items:  # Rural and Urban numbers do not overlap in LoveDA
        if rel in targets:
            fail(f"{member} and {targets[rel]} would both become {rel}")
        targets[rel] = member
    convert_all(items, lambda it: os.path.join(args.out_dir, it[2]),
                functools.partial(extract_member, out_dir=args.out_dir),
                marker=os.path.join(args.out_dir, ".d2seg_prepared.json"), spec={"tool": "loveda"},
                force=args.force, desc="LoveDA", nproc=args.nproc)


if __name__ == "__main__":
    main()
