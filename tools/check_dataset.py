#!/usr/bin/env python
"""Checks a semantic-segmentation dataset before training: what gives mIoU 0 or NaN later.

    python tools/check_dataset.py NAME [--num-classes N]            # a registered dataset
    python tools/check_dataset.py --image-root DIR --gt-root DIR --num-classes N \
        [--image-suffix .jpg] [--label-suffix .png] [--ignore-label 255] [--reduce-zero-label]

Reports per-class pixel counts, label values outside the class range, images without labels
(and labels without images), unreadable files, image/label size mismatches and label files that
are not single-channel class ids, with hints for the classic mistakes: 0/255 binary masks,
Cityscapes labelIds instead of labelTrainIds, a NUM_CLASSES that disagrees with the labels,
1-based ids without reduce_zero_label, RGB (colour) and palette labels. Exits with 1 when it
finds problems (0 when the dataset is usable; warnings alone do not fail).
"""
import argparse
import os
import sys
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

CITYSCAPES_LABEL_IDS = set(range(34))  # labelIds 0..33; the 19 trainIds are 0..18
CITYSCAPES_TYPICAL_IDS = {7, 8, 11, 17, 21, 23, 24, 26}  # road, sidewalk, building, pole, ...
_GOOD_MODES = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L")


class Report:
    def __init__(self):
        self.problems: List[str] = []
        self.warnings: List[str] = []
        self.info: List[str] = []

    def problem(self, msg):
        self.problems.append(msg)

    def warn(self, msg):
        self.warnings.append(msg)

    def text(self) -> str:
        out = list(self.info)
        for title, items in (("PROBLEMS", self.problems), ("WARNINGS", self.warnings)):
            if items:
                out.append(f"\n{title} ({len(items)}):")
                out += [f"  - {m}" for m in items]
        out.append("\nOK: no problems found." if not self.problems
                   else f"\n{len(self.problems)} problem(s) found.")
        return "\n".join(out)


def _few(items: Sequence[str], n: int = 3) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _read_label(path: str) -> Tuple[Optional[np.ndarray], str]:
    """(array or None, PIL mode); raises on unreadable files."""
    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if mode not in _GOOD_MODES:
            return np.asarray(img), mode
        return np.asarray(img).astype(np.int64), mode


def check_samples(samples: Sequence[Tuple[Optional[str], Optional[str]]], num_classes: int,
                  class_names: Optional[Sequence[str]] = None, ignore_label: int = 255,
                  reduce_zero_label: bool = False, progress: bool = True) -> Report:
    """``samples``: (image path or None, label path or None) pairs."""
    rep = Report()
    names = list(class_names) if class_names else [f"class {k}" for k in range(num_classes)]
    raw_pixels = Counter()  # raw label value -> pixels
    raw_images = Counter()  # raw label value -> images containing it
    examples: Dict[int, List[str]] = defaultdict(list)
    modes = Counter()
    palette_files, rgb_files, grey_rgb_files, unreadable, mismatched = [], [], [], [], []
    no_label = [img for img, gt in samples if gt is None]
    no_image = [gt for img, gt in samples if img is None]
    all_ignored = []
    labelids_named = [gt for _, gt in samples if gt and gt.endswith("_labelIds.png")]
    for img_path, gt_path in tqdm([s for s in samples if s[0] and s[1]], desc="checking",
                                  unit="img", disable=not progress):
        try:
            label, mode = _read_label(gt_path)
        except Exception as e:  # noqa: BLE001  (any unreadable file is reported, not raised)
            unreadable.append(f"{gt_path} ({type(e).__name__}: {e})")
            continue
        modes[mode] += 1
        if mode not in _GOOD_MODES:
            grey = label.ndim == 3 and (label[..., :3] == label[..., :1]).all()
            (grey_rgb_files if grey else rgb_files).append(gt_path)
            continue
        if mode == "P":
            palette_files.append(gt_path)
        try:
            with Image.open(img_path) as im:
                im.load()
                size = im.size[::-1]
        except Exception as e:  # noqa: BLE001
            unreadable.append(f"{img_path} ({type(e).__name__}: {e})")
            continue
        if label.shape[:2] != size:
            mismatched.append(f"{gt_path} is {label.shape[0]}x{label.shape[1]}, its image "
                              f"{img_path} {size[0]}x{size[1]} (HxW)")
        values, counts = np.unique(label, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist()):
            raw_pixels[v] += c
            raw_images[v] += 1
            if len(examples[v]) < 3:
                examples[v].append(gt_path)
        eff = set(_effective(v, ignore_label, reduce_zero_label) for v in values.tolist())
        if eff == {ignore_label}:
            all_ignored.append(gt_path)

    # ---- pairing and files ---------------------------------------------------------------
    if no_label:
        rep.problem(f"{len(no_label)} image(s) without a label: {_few(no_label)}")
    if no_image:
        rep.problem(f"{len(no_image)} label(s) without an image: {_few(no_image)}")
    if unreadable:
        rep.problem(f"{len(unreadable)} unreadable/corrupt file(s): {_few(unreadable)}")
    if mismatched:
        rep.problem(f"{len(mismatched)} label(s) whose size differs from the image's: "
                    f"{_few(mismatched)}")
    if rgb_files:
        rep.problem(
            f"{len(rgb_files)} label(s) are colour (RGB/RGBA) images, e.g. {_few(rgb_files)}. "
            "Labels must be single-channel PNGs of class ids (0..N-1, ignore = "
            f"{ignore_label}); these look like colour visualisations: map each colour to its "
            "class id and save as an 'L' PNG.")
    if grey_rgb_files:
        rep.problem(
            f"{len(grey_rgb_files)} label(s) are RGB images with three equal channels, e.g. "
            f"{_few(grey_rgb_files)}: save them as single-channel ('L') PNGs "
            "(Image.open(f).convert('L').save(f)).")
    if palette_files:
        rep.warn(
            f"{len(palette_files)} label(s) are palette ('P') PNGs, e.g. {_few(palette_files)}: "
            "their palette INDICES are read as class ids (as Pascal VOC's); if instead their "
            "colours encode your classes, convert colours to ids.")
    if all_ignored:
        rep.warn(f"{len(all_ignored)} label(s) are entirely ignore ({ignore_label}): "
                 f"{_few(all_ignored)}")

    # ---- class histogram -----------------------------------------------------------------
    class_pixels = np.zeros(num_classes, np.int64)
    class_images = np.zeros(num_classes, np.int64)
    ignored = 0
    out_of_range: Dict[int, int] = {}  # effective value -> pixels
    raw_of_bad: Dict[int, int] = {}
    for v, c in raw_pixels.items():
        e = _effective(v, ignore_label, reduce_zero_label)
        if e == ignore_label:
            ignored += c
        elif 0 <= e < num_classes:
            class_pixels[e] += c
            class_images[e] += raw_images[v]
        else:
            out_of_range[e] = out_of_range.get(e, 0) + c
            raw_of_bad[v] = c
    total = sum(raw_pixels.values())
    rep.info.append(f"{len(samples)} samples, {total} labelled pixels, NUM_CLASSES={num_classes}, "
                    f"ignore={ignore_label}, reduce_zero_label={reduce_zero_label}")
    rep.info.append(f"label modes: {dict(modes)}")
    if total:
        rep.info.append(f"\n{'id':>4}  {'class':<24} {'pixels':>12} {'%':>7} {'images':>7}")
        for k in range(num_classes):
            rep.info.append(f"{k:>4}  {names[k][:24]:<24} {class_pixels[k]:>12} "
                            f"{100 * class_pixels[k] / total:>7.2f} {class_images[k]:>7}")
        rep.info.append(f"{'':>4}  {'(ignored)':<24} {ignored:>12} {100 * ignored / total:>7.2f}")
        if out_of_range:
            rep.info.append(f"{'':>4}  {'(outside 0..N-1)':<24} {sum(out_of_range.values()):>12} "
                            f"{100 * sum(out_of_range.values()) / total:>7.2f}")
    _hints(rep, raw_pixels, raw_of_bad, out_of_range, examples, num_classes, class_pixels,
           ignore_label, reduce_zero_label, labelids_named)
    return rep


def _effective(v: int, ignore: int, reduce_zero_label: bool) -> int:
    """The id the model trains on for a raw label value (mmseg's reduce_zero_label)."""
    if not reduce_zero_label or v == ignore:
        return v
    return ignore if v == 0 else v - 1


def _hints(rep, raw_pixels, raw_of_bad, out_of_range, examples, num_classes, class_pixels,
           ignore, reduce_zero_label, labelids_named):
    values = set(raw_pixels)
    binary = bool(values) and values <= {0, 255} and 255 in values and ignore == 255
    if binary:
        rep.problem(
            "the labels hold only 0 and 255: 0/255 binary masks? 255 is the ignore value, so "
            "every foreground pixel is ignored (its IoU is NaN or 0). Map 255 -> 1 "
            "(label // 255) and use NUM_CLASSES 2.")
    cityscapes_ids = bool(labelids_named) or (
        bool(out_of_range) and num_classes == 19 and set(raw_of_bad) <= CITYSCAPES_LABEL_IDS
        and len(values & CITYSCAPES_TYPICAL_IDS) >= 3)
    if cityscapes_ids:
        rep.problem(
            "these look like Cityscapes labelIds (0..33"
            + (f", e.g. {_few(labelids_named, 1)}" if labelids_named else "")
            + ") instead of the 19 labelTrainIds: use the *_gtFine_labelTrainIds.png files "
            "(make them with: python tools/datasets/cityscapes.py <cityscapes folder>).")
    if out_of_range:
        shown = ", ".join(f"{v} ({c} px, e.g. {examples[v][0]})"
                          for v, c in sorted(raw_of_bad.items())[:5])
        rep.problem(f"label values outside [0, {num_classes}) that are not the ignore value "
                    f"{ignore}: {shown}"
                    + (" (raw values, before reduce_zero_label)" if reduce_zero_label else ""))
        top = max(out_of_range)
        if not binary and not cityscapes_ids:
            if not reduce_zero_label and 0 not in values and top == num_classes:
                rep.problem(f"ids run 1..{num_classes} with no 0: 1-based labels? Set "
                            "reduce_zero_label (INPUT.REDUCE_ZERO_LABEL True / "
                            "register_sem_seg_folder(..., reduce_zero_label=True)) so that k -> k-1.")
            else:
                zero_hint = (" If 0 means 'other / unlabelled' (as in ADE20K's raw annotations), "
                             "set reduce_zero_label instead (0 -> ignore, k -> k-1)."
                             if not reduce_zero_label and top == num_classes else "")
                rep.problem(f"NUM_CLASSES={num_classes} disagrees with the labels, which use ids up "
                            f"to {top}: set MODEL.SEM_SEG_HEAD.NUM_CLASSES to at least {top + 1} "
                            f"(and list that many classes), or fix the labels.{zero_hint}")
    present = np.nonzero(class_pixels)[0]
    if len(present) and not binary:
        missing = [k for k in range(num_classes) if class_pixels[k] == 0]
        if missing and present.max() < num_classes - 1:
            rep.warn(f"classes {present.max() + 1}..{num_classes - 1} never appear in the labels "
                     f"(highest id used: {present.max()}): is NUM_CLASSES={num_classes} too large? "
                     "(fine for a subset; absent classes are NaN and left out of mIoU)")
        elif missing:
            rep.warn(f"{len(missing)} class(es) never appear: {_few([str(k) for k in missing], 10)}")


# ---- sample lists --------------------------------------------------------------------------
def folder_samples(image_root, gt_root, image_suffix, label_suffix):
    from d2seg.data.datasets.folder import _list_files

    for kind, root in (("image", image_root), ("label", gt_root)):
        if not os.path.isdir(root):
            raise SystemExit(f"error: {kind} folder {root!r} does not exist")
    images = _list_files(image_root, image_suffix)
    labels = _list_files(gt_root, label_suffix)
    return [(images.get(k), labels.get(k)) for k in sorted(images.keys() | labels.keys())]


def registered_samples(name):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import d2seg  # noqa: F401  (registers the datasets)

    if name not in DatasetCatalog.list():
        raise SystemExit(f"error: no dataset named {name!r} is registered (import the module that "
                         "registers it, or use --image-root/--gt-root)")
    dicts = DatasetCatalog.get(name)
    samples = []
    for d in dicts:
        img = d["file_name"] if os.path.isfile(d["file_name"]) else None
        gt = d.get("sem_seg_file_name")
        samples.append((img, gt if gt and os.path.isfile(gt) else None))
        if img is None:  # name the missing image itself
            samples[-1] = (None, gt or d["file_name"])
    return samples, MetadataCatalog.get(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="a registered dataset (e.g. ade20k_sem_seg_raw_val)")
    p.add_argument("--image-root")
    p.add_argument("--gt-root")
    p.add_argument("--num-classes", type=int,
                   help="classes the model predicts (MODEL.SEM_SEG_HEAD.NUM_CLASSES); default: "
                        "the registered dataset's class count")
    p.add_argument("--image-suffix", default=".jpg")
    p.add_argument("--label-suffix", default=".png")
    p.add_argument("--ignore-label", type=int, default=255)
    p.add_argument("--reduce-zero-label", action="store_true")
    p.add_argument("--classes", help="comma-separated class names (folder mode)")
    p.add_argument("--max-images", type=int, default=0, help="check only the first N (0 = all)")
    args = p.parse_args(argv)

    rep_extra = []
    if args.name:
        if args.image_root or args.gt_root:
            p.error("give a dataset NAME or --image-root/--gt-root, not both")
        samples, meta = registered_samples(args.name)
        classes = list(meta.get("stuff_classes", []) or [])
        num_classes = args.num_classes or len(classes)
        if not num_classes:
            p.error(f"{args.name} has no stuff_classes: give --num-classes")
        if classes and args.num_classes and args.num_classes != len(classes):
            rep_extra.append(f"NUM_CLASSES={args.num_classes} disagrees with {args.name}'s "
                             f"{len(classes)} classes: set MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(classes)}")
            classes = None
        ignore = meta.get("ignore_label", args.ignore_label)
        reduce = bool(meta.get("reduce_zero_label", args.reduce_zero_label))
    else:
        if not (args.image_root and args.gt_root and args.num_classes):
            p.error("give a dataset NAME, or --image-root, --gt-root and --num-classes")
        samples = folder_samples(args.image_root, args.gt_root, args.image_suffix, args.label_suffix)
        classes = args.classes.split(",") if args.classes else None
        if classes and len(classes) != args.num_classes:
            p.error(f"--classes lists {len(classes)} names but --num-classes is {args.num_classes}")
        num_classes, ignore, reduce = args.num_classes, args.ignore_label, args.reduce_zero_label
    if args.max_images:
        samples = samples[: args.max_images]
    if classes and len(classes) != num_classes:
        classes = None
    rep = check_samples(samples, num_classes, classes, ignore, reduce)
    for msg in rep_extra:
        rep.problem(msg)
    print(rep.text())
    return 1 if rep.problems else 0


if __name__ == "__main__":
    sys.exit(main())
