#!/usr/bin/env python
"""Checks the occlusion-aware face dataset that mmseg's ``FaceOccludedDataset`` config
(``deeplabv3plus_r101_512x512_C-CM+C-WO-NatOcc-SOT``) trains and tests on:

    occlusion-aware-face-dataset/
        train.txt                              stems of the training faces (one per line)
        NatOcc_hand_sot/{img/<stem>.jpg, mask/<stem>.png}    made by the authors' generator,
        NatOcc_object/{img,mask}/...                         github.com/kennyvoo/face-occlusion-
        RandOcc/{img,mask}/...                               generation, from the same faces
        RealOcc/{image/<stem>.jpg, mask/<stem>.png, split/val.txt}   the authors' download

    python tools/datasets/occlusion_face.py $DETECTRON2_DATASETS/occlusion-aware-face-dataset \\
        [--val-only] [--convert-255] [--nproc 2] [--force]

mmseg joins ``train.txt`` to the data root for ALL THREE training sets: each stem must have an
image and a mask in every one of them. The tool checks the layout, that every listed image and
mask exists and decodes completely (a truncated file is named), that each mask is single-channel,
of its image's size, with values 0 (background) and 1 (face): what mmseg reads (it does not
rescale masks). The generator writes ``mask / 255`` (0/1) and RealOcc's masks are 0/1 too (they
look black in a viewer); masks saved as 0/255 (the generator without its ``/255``) are an error,
or, with ``--convert-255``, are rewritten in place as 0/1 (each atomically; a re-run resumes).
A finished check is recorded (``.d2seg_checked.json``): running again does nothing unless
``--force``.
"""
import argparse
import functools
import json
import os
import sys
import time
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SourceError, add_common_args, fail, read_image, save_png  # noqa: E402

TRAIN_SETS = ("NatOcc_hand_sot", "NatOcc_object", "RandOcc")
# set -> (image folder, mask folder, split file), relative to the root: mmseg's occlude_face.py
LAYOUT = dict({s: (f"{s}/img", f"{s}/mask", "train.txt") for s in TRAIN_SETS},
              RealOcc=("RealOcc/image", "RealOcc/mask", "RealOcc/split/val.txt"))
MARKER = ".d2seg_checked.json"
SHOWN = 20  # problems listed before "... and N more"
HOW = {
    "train.txt": "the stems of the training faces (CelebAMask-HQ-WO-train), one per line",
    "RealOcc": "RealOcc from the authors' download (drive link in "
               "github.com/kennyvoo/face-occlusion-generation), with image/, mask/, split/val.txt",
}


def read_split(root, rel):
    """The stems a split file lists, in order (duplicates reported, as mmseg keeps them)."""
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        fail(f"split file {path!r} does not exist: expected {HOW.get(rel, HOW['RealOcc'])}")
    with open(path) as f:
        stems = [line.strip() for line in f if line.strip()]
    if not stems:
        fail(f"split file {path!r} lists no samples")
    bad = [s for s in stems if s.endswith((".jpg", ".png"))]
    if bad:
        fail(f"split file {path!r} lists file names ({bad[0]!r}): mmseg adds .jpg / .png itself; "
             "list stems")
    dups = len(stems) - len(set(stems))
    if dups:
        print(f"warning: {path} lists {dups} stem(s) twice; mmseg trains on them twice, d2seg "
              "once")
    return stems


def check_item(item, convert_255=False):
    """None, or the problem of one (image, mask) pair, naming the file."""
    img_path, mask_path = item
    try:
        image = read_image(img_path, img_path, mode="RGB")
        mask = read_image(mask_path, mask_path)
    except SourceError as e:
        return str(e)
    if mask.ndim != 2:
        return (f"{mask_path}: a {mask.shape[-1]}-channel mask; expected one channel of class "
                "ids (0 = background, 1 = face)")
    if mask.shape != image.shape[:2]:
        return (f"{mask_path}: {mask.shape[0]}x{mask.shape[1]} (HxW) but its image {img_path} is "
                f"{image.shape[0]}x{image.shape[1]}")
    values = set(np.unique(mask).tolist())
    if values <= {0, 1}:
        return None
    if values <= {0, 255}:
        if not convert_255:
            return (f"{mask_path}: values 0/255; mmseg reads 0 = background, 1 = face (255 = "
                    "ignored): run with --convert-255 to rewrite such masks as 0/1")
        save_png((mask == 255).astype(np.uint8), mask_path)  # atomic: a re-run resumes
        return None
    return (f"{mask_path}: values {sorted(values)[:10]}; expected 0 (background) and 1 (face)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="the occlusion-aware-face-dataset folder")
    p.add_argument("--val-only", action="store_true",
                   help="check RealOcc only (to evaluate, without the generated training sets)")
    p.add_argument("--convert-255", action="store_true",
                   help="rewrite 0/255 masks as 0/1, in place")
    add_common_args(p)
    args = p.parse_args(argv)
    root = args.root
    if not os.path.isdir(root):
        fail(f"{root!r} does not exist (or is not a folder)")
    sets = ["RealOcc"] if args.val_only else list(LAYOUT)
    marker = os.path.join(root, MARKER)
    spec = {"tool": "occlusion_face", "sets": sets}
    if os.path.isfile(marker) and not args.force:
        with open(marker) as f:
            done = json.load(f)
        if set(sets) <= set(done.get("sets", [])):
            print(f"{root}: already checked ({done.get('count', '?')} pairs, {marker}); nothing "
                  "to do. Use --force to check again.")
            return 0

    items, problems = [], []
    for name in sets:
        img_dir, mask_dir, split = LAYOUT[name]
        for rel in (img_dir, mask_dir):
            if not os.path.isdir(os.path.join(root, rel)):
                fail(f"folder {os.path.join(root, rel)!r} does not exist: expected "
                     + (HOW["RealOcc"] if name == "RealOcc" else
                        f"the generator's output for {name} (OUTPUT_PATH {name}/: img/, mask/)"))
        for stem in read_split(root, split):
            img = os.path.join(root, img_dir, stem + ".jpg")
            mask = os.path.join(root, mask_dir, stem + ".png")
            missing = [f for f in (img, mask) if not os.path.isfile(f)]
            for f in missing:
                problems.append(f"{f}: missing ({split} lists {stem!r})")
            if not missing:
                items.append((img, mask))
    check = functools.partial(check_item, convert_255=args.convert_255)
    if args.nproc > 1 and len(items) > 1:
        with Pool(args.nproc) as pool:
            results = list(tqdm(pool.imap(check, items, chunksize=16), total=len(items),
                                desc="occlusion-aware face"))
    else:
        results = [check(it) for it in tqdm(items, desc="occlusion-aware face")]
    problems += [r for r in results if r]
    if problems:
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        fail(f"{len(problems)} problem(s) in {root}:\n  " + "\n  ".join(problems[:SHOWN]) + more
             + "\n(regenerate or download those files again, then rerun)")
    with open(marker, "w") as f:
        json.dump(dict(spec, count=len(items), finished=time.strftime("%Y-%m-%d %H:%M:%S")), f)
    for name in sets:
        n = sum(1 for img, _ in items if img.startswith(os.path.join(root, LAYOUT[name][0], "")))
        print(f"{name}: {n} image/mask pairs")
    print("done: every listed image and mask decodes; masks are 0/1.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
