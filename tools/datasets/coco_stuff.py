#!/usr/bin/env python
"""COCO-Stuff's ``*_labelTrainIds.png`` (171 classes) from the official downloads, as mmseg's
tools/convert_datasets/coco_stuff10k.py and coco_stuff164k.py.

    python tools/datasets/coco_stuff.py 10k  $DETECTRON2_DATASETS/coco_stuff10k  [--nproc 8]
    python tools/datasets/coco_stuff.py 164k $DETECTRON2_DATASETS/coco_stuff164k [--nproc 8]

10k (``cocostuff-10k-v1.1.zip`` unpacked: ``images/*.jpg``, ``annotations/*.mat``,
``imageLists/{train,test}.txt``): copies each image into ``images/{train2014,test2014}/`` and
writes ``annotations/{train2014,test2014}/<name>_labelTrainIds.png`` from the .mat's ``S`` (COCO
ids 1..182 -> 1..171; 0 = unlabelled stays 0, read with ``reduce_zero_label``).
164k (``images/{train2017,val2017}/*.jpg`` from COCO 2017 and ``annotations/{train2017,val2017}/
*.png`` from ``stuffthingmaps_trainval2017.zip``): writes ``<name>_labelTrainIds.png`` next to
each PNG (id-1 values 0..181 -> 0..170; 255 = unlabelled); with ``-o`` into ``OUT/annotations/``,
the images copied to ``OUT/images/`` (as mmseg).
The id tables are d2seg.data.datasets.coco_stuff's (Detectron2's COCO thing ids and the stuff ids
92..182), equal to mmseg's ``clsID_to_trID``.
"""
import argparse
import functools
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (SourceError, add_common_args, convert_all, fail, need, read_image,  # noqa: E402
                     save_bytes, save_png)

SIZES = {"10k": 10000, "164k": 123287}  # mmseg's COCO_LEN: train + test (val) images
SPLITS = {"10k": {"train": "train2014", "test": "test2014"},
          "164k": {"train": "train2017", "val": "val2017"}}


def convert_10k(item, root, out_dir):
    from scipy.io import loadmat

    from d2seg.data.datasets.coco_stuff import coco_ids_to_train_ids

    sub, name = item
    mat = os.path.join(root, "annotations", name + ".mat")
    try:
        label = loadmat(mat)["S"].astype("uint8")  # mmseg's astype(np.uint8)
    except Exception as e:  # scipy raises ValueError / OSError / KeyError on a bad file
        raise SourceError(f"{mat}: cannot read its 'S' label map ({type(e).__name__}: {e}); "
                          "truncated or corrupt: download it again") from e
    with open(os.path.join(root, "images", name + ".jpg"), "rb") as f:
        save_bytes(f.read(), os.path.join(out_dir, "images", sub, name + ".jpg"))
    save_png(coco_ids_to_train_ids(label, "10k"), output_10k(item, out_dir))


def output_10k(item, out_dir):
    sub, name = item
    return os.path.join(out_dir, "annotations", sub, name + "_labelTrainIds.png")


def items_10k(root):
    items = []
    for split, sub in SPLITS["10k"].items():
        path = os.path.join(root, "imageLists", f"{split}.txt")
        if not os.path.isfile(path):
            fail(f"{path!r} does not exist: unzip cocostuff-10k-v1.1.zip into {root!r}")
        with open(path) as f:
            items += [(sub, line.strip()) for line in f if line.strip()]
    for folder, ext in (("images", ".jpg"), ("annotations", ".mat")):
        missing = [n for _, n in items if not os.path.isfile(os.path.join(root, folder, n + ext))]
        if missing:
            fail(f"{len(missing)} listed files are missing from {os.path.join(root, folder)!r}: "
                 f"{[m + ext for m in missing[:5]]}")
    return items


def convert_164k(item, root, out_dir):
    from d2seg.data.datasets.coco_stuff import coco_ids_to_train_ids

    src, sub = item
    label = read_image(src, src)
    if label.ndim != 2:
        raise SourceError(f"{src}: a {label.shape} image, expected a single-channel stuffthingmap")
    if os.path.abspath(out_dir) != os.path.abspath(root):  # mmseg copies the images along
        name = os.path.basename(src).split(".")[0] + ".jpg"
        with open(os.path.join(root, "images", sub, name), "rb") as f:
            save_bytes(f.read(), os.path.join(out_dir, "images", sub, name))
    save_png(coco_ids_to_train_ids(label, "164k"), output_164k(item, out_dir))


def output_164k(item, out_dir):
    src, sub = item
    return os.path.join(out_dir, "annotations", sub,
                        os.path.basename(src).split(".")[0] + "_labelTrainIds.png")


def items_164k(root):
    items = []
    for sub in SPLITS["164k"].values():
        folder = os.path.join(root, "annotations", sub)
        if not os.path.isdir(folder):
            fail(f"{folder!r} does not exist: unzip stuffthingmaps_trainval2017.zip into "
                 f"{os.path.join(root, 'annotations')!r}")
        items += [(p, sub) for p in sorted(glob.glob(os.path.join(folder, "*.png")))
                  if "_labelTrainIds" not in p]
    return items


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("version", choices=sorted(SIZES), help="COCO-Stuff 10k or 164k")
    p.add_argument("coco_path", help="the unpacked download (see above)")
    p.add_argument("-o", "--out-dir", help="default: coco_path (as mmseg)")
    p.add_argument("--no-size-check", action="store_true",
                   help=f"accept another number of images than mmseg's {SIZES}")
    add_common_args(p)
    args = p.parse_args(argv)

    root, out_dir = args.coco_path, args.out_dir or args.coco_path
    if args.version == "10k":
        need("scipy", "reading COCO-Stuff 10k's .mat annotations")
        items = items_10k(root)
        output_of = functools.partial(output_10k, out_dir=out_dir)
        convert = functools.partial(convert_10k, root=root, out_dir=out_dir)
    else:
        items = items_164k(root)
        output_of = functools.partial(output_164k, out_dir=out_dir)
        convert = functools.partial(convert_164k, root=root, out_dir=out_dir)
        missing = [os.path.join(root, "images", sub, os.path.basename(src).split(".")[0] + ".jpg")
                   for src, sub in items]
        missing = [m for m in missing if not os.path.isfile(m)]
        if missing:
            fail(f"{len(missing)} annotated images are missing: {missing[:5]} (unzip COCO's "
                 f"train2017.zip / val2017.zip into {os.path.join(root, 'images')!r})")
    if not items:
        fail(f"no annotations found under {root!r}")
    if len(items) != SIZES[args.version] and not args.no_size_check:
        fail(f"found {len(items)} images, COCO-Stuff {args.version} has {SIZES[args.version]} "
             "(mmseg's check); an incomplete download? --no-size-check accepts it")
    convert_all(items, output_of, convert,
                marker=os.path.join(out_dir, "annotations", ".d2seg_labelTrainIds.json"),
                spec={"tool": "coco_stuff", "version": args.version}, force=args.force,
                desc=f"COCO-Stuff {args.version}", nproc=args.nproc)


if __name__ == "__main__":
    main()
