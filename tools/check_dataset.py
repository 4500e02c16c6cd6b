#!/usr/bin/env python
"""Checks a semantic-segmentation dataset before training: what gives mIoU 0 or NaN later.

    python tools/check_dataset.py --config-file CFG [KEY VALUE ...]  # the datasets of a config
    python tools/check_dataset.py NAME [--num-classes N]            # a registered dataset
    python tools/check_dataset.py --image-root DIR --gt-root DIR --num-classes N \
        [--image-suffix .jpg] [--label-suffix .png] [--ignore-label 255] [--reduce-zero-label]

Reports per-class pixel counts, label values outside the class range, images without labels
(and labels without images), unreadable files, image/label size mismatches and label files that
are not single-channel class ids, with hints for the classic mistakes: 0/255 binary masks,
Cityscapes labelIds instead of labelTrainIds, a NUM_CLASSES that disagrees with the labels,
1-based ids without reduce_zero_label, RGB (colour) and palette labels. Labels are read by
training's and evaluation's reader (``d2seg.data.image_io.read_label``): a label this tool accepts
trains and evaluates. With ``--config-file`` it checks every dataset the config declares
(DATASETS.FOLDER.NAMES) or uses (DATASETS.TRAIN, DATASETS.TEST) against its NUM_CLASSES, ignore
value and reduce_zero_label. Exits with 1 when it finds problems (0 when the dataset is usable;
warnings alone do not fail).
"""
import argparse
import os
import sys
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from d2seg.data.datasets import dataset_metadata
from d2seg.data.image_io import BadSampleError, ColourLabelError, read_image, read_label
from d2seg.data.image_io import reduce_zero_label as _reduce_zero_label

CITYSCAPES_LABEL_IDS = set(range(34))  # labelIds 0..33; the 19 trainIds are 0..18
CITYSCAPES_TYPICAL_IDS = {7, 8, 11, 17, 21, 23, 24, 26}  # road, sidewalk, building, pole, ...


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


def _label_mode(path: str) -> str:
    """The PIL mode of a label file (its header only), for the report."""
    try:
        with Image.open(path) as img:
            return img.mode
    except Exception:  # noqa: BLE001  (read_label reports it)
        return "unreadable"


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
        mode = _label_mode(gt_path)
        modes[mode] += 1
        try:  # raw ids: the hints name the values in the files
            label = read_label(gt_path)
        except ColourLabelError as e:
            (grey_rgb_files if e.grey else rgb_files).append(gt_path)
            continue
        except BadSampleError as e:  # unreadable, or ids that do not fit uint8
            unreadable.append(str(e))
            continue
        if mode == "P":
            palette_files.append(gt_path)
        try:  # as training decodes it (cv2, EXIF orientation applied)
            size = read_image(img_path).shape[:2]
        except Exception as e:  # noqa: BLE001  (any unreadable file is reported, not raised)
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
        eff = set(_effective(v, reduce_zero_label) for v in values.tolist())
        if eff == {ignore_label}:
            all_ignored.append(gt_path)

    # ---- pairing and files ---------------------------------------------------------------
    if no_label:
        rep.problem(f"{len(no_label)} image(s) without a label: {_few(no_label)}")
    if no_image:
        rep.problem(f"{len(no_image)} label(s) without an image: {_few(no_image)}")
    if unreadable:
        rep.problem(f"{len(unreadable)} unreadable/corrupt or unusable file(s): {_few(unreadable)}")
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
        e = _effective(v, reduce_zero_label)
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


def _effective(v: int, reduce_zero_label: bool) -> int:
    """The id the model trains on for a raw label value (the reader's reduce_zero_label)."""
    return int(_reduce_zero_label(np.array([v]))[0]) if reduce_zero_label else v


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
                            "reduce_zero_label (DATASETS.FOLDER.REDUCE_ZERO_LABEL True / "
                            "INPUT.REDUCE_ZERO_LABEL True / register_sem_seg_folder(..., "
                            "reduce_zero_label=True)) so that k -> k-1.")
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
    """(samples, metadata) of a registered dataset; a dataset that cannot be listed (e.g. a folder
    whose images and labels do not pair up) raises SystemExit with its error."""
    from detectron2.data import DatasetCatalog

    import d2seg  # noqa: F401  (registers the datasets)

    if name not in DatasetCatalog.list():
        raise SystemExit(f"error: no dataset named {name!r} is registered (import the module that "
                         "registers it, declare it in DATASETS.FOLDER and give --config-file, or "
                         "use --image-root/--gt-root)")
    try:
        dicts = DatasetCatalog.get(name)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {name}: {e}") from e
    samples = []
    for d in dicts:
        img = d["file_name"] if os.path.isfile(d["file_name"]) else None
        gt = d.get("sem_seg_file_name")
        samples.append((img, gt if gt and os.path.isfile(gt) else None))
        if img is None:  # name the missing image itself
            samples[-1] = (None, gt or d["file_name"])
    return samples, dataset_metadata(name)


def check_registered(name: str, num_classes: Optional[int], ignore: int, reduce: bool,
                     max_images: int = 0) -> Report:
    """Checks a registered dataset; its metadata's ignore_label and reduce_zero_label win over
    ``ignore`` / ``reduce``, its class count is the default of ``num_classes``."""
    samples, meta = registered_samples(name)
    classes = list(meta.get("stuff_classes", []) or [])
    extra = []
    if not (num_classes or classes):
        raise SystemExit(f"error: {name} has no stuff_classes: give --num-classes")
    if classes and num_classes and num_classes != len(classes):
        extra.append(f"NUM_CLASSES={num_classes} disagrees with {name}'s {len(classes)} "
                     f"classes: set MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(classes)}")
        classes = None
    ignore = meta.get("ignore_label", ignore)
    reduce = bool(meta.get("reduce_zero_label", reduce))
    if max_images:
        samples = samples[:max_images]
    rep = check_samples(samples, num_classes or len(classes), classes, ignore, reduce)
    for msg in extra:
        rep.problem(msg)
    return rep


def check_config(config_file: str, opts: List[str], max_images: int = 0) -> int:
    """Checks every dataset the config declares (DATASETS.FOLDER.NAMES) or uses (TRAIN, TEST)
    with the config's NUM_CLASSES, IGNORE_VALUE and reduce_zero_label; the exit code."""
    import d2seg  # noqa: F401
    from d2seg.data.mappers import dataset_reduce_zero_label
    from d2seg.engine import setup_cfg

    try:  # registers DATASETS.FOLDER; a bad declaration or NUM_CLASSES fails here, named
        cfg = setup_cfg(argparse.Namespace(config_file=config_file, opts=opts), None)
    except (OSError, ValueError) as e:
        print(f"error: {config_file}: {e}")
        return 1
    names = list(dict.fromkeys([*cfg.DATASETS.FOLDER.NAMES, *cfg.DATASETS.TRAIN,
                                *cfg.DATASETS.TEST]))
    if not names:
        print(f"error: {config_file} declares and uses no dataset")
        return 1
    failed = 0
    for name in names:
        print(f"==== {name}")
        try:
            rep = check_registered(name, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                                   cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                                   dataset_reduce_zero_label(cfg, [name]), max_images)
        except SystemExit as e:
            print(e)
            failed += 1
            continue
        print(rep.text())
        failed += bool(rep.problems)
    print(f"\n{len(names)} dataset(s) checked, {failed} with problems.")
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="a registered dataset (e.g. ade20k_sem_seg_raw_val)")
    p.add_argument("--config-file", help="check the datasets of this config (then the "
                   "positional arguments are KEY VALUE overrides)")
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
    # with --config-file, the positional arguments are KEY VALUE overrides
    args, opts = p.parse_known_args(argv)

    if args.config_file:
        if args.image_root or args.gt_root:
            p.error("give --config-file or --image-root/--gt-root, not both")
        return check_config(args.config_file, ([args.name] if args.name else []) + opts,
                            args.max_images)
    if opts:
        p.error(f"unrecognized arguments: {' '.join(opts)} (KEY VALUE overrides need "
                "--config-file)")
    if args.name:
        if args.image_root or args.gt_root:
            p.error("give a dataset NAME or --image-root/--gt-root, not both")
        rep = check_registered(args.name, args.num_classes, args.ignore_label,
                               args.reduce_zero_label, args.max_images)
    else:
        if not (args.image_root and args.gt_root and args.num_classes):
            p.error("give --config-file, a dataset NAME, or --image-root, --gt-root and "
                    "--num-classes")
        samples = folder_samples(args.image_root, args.gt_root, args.image_suffix, args.label_suffix)
        classes = args.classes.split(",") if args.classes else None
        if classes and len(classes) != args.num_classes:
            p.error(f"--classes lists {len(classes)} names but --num-classes is {args.num_classes}")
        if args.max_images:
            samples = samples[: args.max_images]
        rep = check_samples(samples, args.num_classes, classes, args.ignore_label,
                            args.reduce_zero_label)
    print(rep.text())
    return 1 if rep.problems else 0


if __name__ == "__main__":
    sys.exit(main())
