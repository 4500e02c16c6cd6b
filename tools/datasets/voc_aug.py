#!/usr/bin/env python
"""Pascal VOC 2012 "aug" (trainaug, 10582 images) from the SBD dataset, as mmseg's
tools/convert_datasets/voc_aug.py.

    python tools/datasets/voc_aug.py $DETECTRON2_DATASETS/VOCdevkit <SBD>/benchmark_RELEASE [--force]

Converts every ``<SBD>/dataset/cls/*.mat`` (``GTcls.Segmentation``) into
``VOC2012/SegmentationClassAug/*.png`` and writes ``VOC2012/ImageSets/Segmentation/``:
``trainaug.txt`` = (VOC train + SBD train + SBD val) - VOC val (10582 names) and ``aug.txt`` =
(SBD train + SBD val) - (VOC train + VOC val) (10582 - 1464). mmseg's voc12aug training set
(d2seg's ``voc_2012_sem_seg_trainaug``) is VOC ``train.txt`` with ``SegmentationClass`` plus
``aug.txt`` with ``SegmentationClassAug``.
"""
import argparse
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_common_args, convert_all, fail, need, save_png, write_lines  # noqa: E402

AUG_LEN = 10582


def convert_mat(stem, in_dir, out_dir):
    from scipy.io import loadmat

    data = loadmat(os.path.join(in_dir, stem + ".mat"))
    mask = data["GTcls"][0]["Segmentation"][0].astype(np.uint8)
    save_png(mask, os.path.join(out_dir, stem + ".png"))


def read_list(path):
    if not os.path.isfile(path):
        fail(f"{path!r} does not exist")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("devkit_path", help="VOCdevkit (holding VOC2012/)")
    p.add_argument("aug_path", help="SBD's benchmark_RELEASE (holding dataset/cls/*.mat)")
    p.add_argument("-o", "--out-dir", help="default: VOC2012/SegmentationClassAug")
    p.add_argument("--no-size-check", action="store_true",
                   help=f"accept lists other than the standard {AUG_LEN} images (subsets)")
    add_common_args(p)
    args = p.parse_args(argv)
    need("scipy.io", "tools/datasets/voc_aug.py (SBD's .mat files)")

    voc = os.path.join(args.devkit_path, "VOC2012")
    sets = os.path.join(voc, "ImageSets", "Segmentation")
    in_dir = os.path.join(args.aug_path, "dataset", "cls")
    out_dir = args.out_dir or os.path.join(voc, "SegmentationClassAug")
    for path in (voc, in_dir):
        if not os.path.isdir(path):
            fail(f"{path!r} does not exist (see docs/datasets.md for the layout)")
    stems = sorted(f[:-4] for f in os.listdir(in_dir) if f.endswith(".mat"))
    if not stems:
        fail(f"no .mat files in {in_dir!r}")

    full_aug = read_list(os.path.join(args.aug_path, "dataset", "train.txt")) + \
        read_list(os.path.join(args.aug_path, "dataset", "val.txt"))
    train = read_list(os.path.join(sets, "train.txt"))
    val = read_list(os.path.join(sets, "val.txt"))
    trainaug = sorted(set(train + full_aug) - set(val))
    aug = sorted(set(full_aug) - set(train + val))
    if not args.no_size_check and (len(trainaug), len(aug)) != (AUG_LEN, AUG_LEN - len(train)):
        fail(f"trainaug has {len(trainaug)} images and aug {len(aug)}; the standard VOC2012 + SBD "
             f"give {AUG_LEN} and {AUG_LEN - len(train)} (incomplete download?). "
             "--no-size-check accepts other sizes.")
    missing = sorted(set(aug) - set(stems))
    if missing:
        fail(f"{len(missing)} images of aug.txt have no .mat in {in_dir!r}: {missing[:5]}")

    convert_all(
        stems, lambda s: os.path.join(out_dir, s + ".png"),
        functools.partial(convert_mat, in_dir=in_dir, out_dir=out_dir),
        marker=os.path.join(out_dir, ".d2seg_prepared.json"),
        spec={"tool": "voc_aug", "mats": len(stems)}, force=args.force,
        desc="SegmentationClassAug", nproc=args.nproc,
    )
    for name, lines in (("trainaug.txt", trainaug), ("aug.txt", aug)):
        path = os.path.join(sets, name)
        if os.path.isfile(path) and not args.force:
            if sorted(read_list(path)) != lines:
                fail(f"{path!r} exists with other contents; --force replaces it")
            continue
        write_lines(path, lines)
    print(f"trainaug.txt: {len(trainaug)} images, aug.txt: {len(aug)} images in {sets}")


if __name__ == "__main__":
    main()
