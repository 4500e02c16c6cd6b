"""Miniature copies of the public datasets' on-disk layouts (a few tiny images each), and a
context manager that points d2seg's built-in registrations at them."""
import contextlib
import json
import os

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from d2seg.data.datasets import ade20k, cityscapes, pascal_context, voc
from d2seg.data.datasets._common import datasets_root

H, W = 16, 24  # every miniature image (Cityscapes: 16 x 32)


def _rng(seed):
    return np.random.default_rng(seed)


def save_image(path, h=H, w=W, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def save_label(path, label, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(np.asarray(label, dtype=np.uint8))
    if palette:  # as VOC's SegmentationClass: "P" mode, indices = class ids
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    img.save(path)


def blocks(values, h=H, w=W, dtype=np.uint8):
    """A label map of vertical stripes with the given values."""
    values = list(values)
    cols = np.arange(w) * len(values) // w
    return np.tile(np.asarray(values, dtype)[cols], (h, 1))


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


# ---- Cityscapes ------------------------------------------------------------------------------
CITYSCAPES_IDS = [7, 26, 23, 0, 9, 24]  # road, car, sky, unlabeled, parking (ignored), person


def make_cityscapes(root, splits=(("train", 2), ("val", 2)), train_ids=True):
    """cityscapes/{leftImg8bit,gtFine}/<split>/<city>/... with labelIds, labelTrainIds,
    instanceIds and polygons.json (of which Detectron2's loader reads the image size)."""
    h, w = H, 2 * H
    for split, n in splits:
        for i in range(n):
            city = ["aachen", "bochum"][i % 2]
            stem = f"{city}_{i:06d}_000019"
            save_image(f"{root}/cityscapes/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", h, w, i)
            gt = f"{root}/cityscapes/gtFine/{split}/{city}/{stem}_gtFine_"
            ids = blocks(np.roll(CITYSCAPES_IDS, i), h, w)
            save_label(gt + "labelIds.png", ids)
            save_label(gt + "instanceIds.png", ids)
            if train_ids:
                save_label(gt + "labelTrainIds.png", cityscapes.label_ids_to_train_ids(ids))
            with open(gt + "polygons.json", "w") as f:
                json.dump({"imgHeight": h, "imgWidth": w, "objects": []}, f)
    return os.path.join(root, "cityscapes")


# ---- ADE20K ----------------------------------------------------------------------------------
def make_ade20k(root, n_train=2, n_val=2):
    """ADEChallengeData2016/{images,annotations}/{training,validation}: raw labels 0..150."""
    base = f"{root}/ADEChallengeData2016"
    for split, prefix, n in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        for i in range(n):
            stem = f"{prefix}_{i + 1:08d}"
            save_image(f"{base}/images/{split}/{stem}.jpg", seed=i)
            save_label(f"{base}/annotations/{split}/{stem}.png", blocks([0, 1, 2, 150, 75][i:] + [1]))
    return base


# ---- Pascal VOC 2012 -------------------------------------------------------------------------
VOC_TRAIN, VOC_VAL, VOC_AUG = ["2007_000032", "2007_000039"], ["2007_000033"], ["2008_000002", "2008_000003"]


def make_voc(root, aug=True):
    """VOCdevkit/VOC2012/{JPEGImages,SegmentationClass[,SegmentationClassAug],ImageSets}."""
    base = f"{root}/VOCdevkit/VOC2012"
    for i, stem in enumerate(VOC_TRAIN + VOC_VAL + VOC_AUG):
        save_image(f"{base}/JPEGImages/{stem}.jpg", seed=i)
        if stem not in VOC_AUG:  # palette PNG, 255 = object boundary
            save_label(f"{base}/SegmentationClass/{stem}.png", blocks([0, 15, 255, 20, i]), palette=True)
    write_lines(f"{base}/ImageSets/Segmentation/train.txt", VOC_TRAIN)
    write_lines(f"{base}/ImageSets/Segmentation/val.txt", VOC_VAL)
    if aug:
        for stem in VOC_AUG + VOC_TRAIN:  # SBD covers some VOC train images too
            save_label(f"{base}/SegmentationClassAug/{stem}.png", blocks([0, 1, 2, 12]))
        write_lines(f"{base}/ImageSets/Segmentation/aug.txt", VOC_AUG)
    return base


# ---- Pascal Context --------------------------------------------------------------------------
CONTEXT_TRAIN, CONTEXT_VAL = ["2008_000002", "2008_000003"], ["2008_000007", "2008_000008"]


def make_pascal_context(root):
    """VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext}."""
    base = f"{root}/VOCdevkit/VOC2010"
    for i, stem in enumerate(CONTEXT_TRAIN + CONTEXT_VAL):
        save_image(f"{base}/JPEGImages/{stem}.jpg", seed=i)
        save_label(f"{base}/SegmentationClassContext/{stem}.png", blocks([0, 1, 59, 30 + i]))
    write_lines(f"{base}/ImageSets/SegmentationContext/train.txt", CONTEXT_TRAIN)
    write_lines(f"{base}/ImageSets/SegmentationContext/val.txt", CONTEXT_VAL)
    return base


# ---- registration under a temporary root -----------------------------------------------------
REGISTRATIONS = {
    "cityscapes": (cityscapes.register_cityscapes_sem_seg,
                   [f"cityscapes_fine_sem_seg_{s}" for s in ("train", "val", "test")]),
    "ade20k": (ade20k.register_ade20k, ["ade20k_sem_seg_raw_train", "ade20k_sem_seg_raw_val"]),
    "voc": (voc.register_pascal_voc_sem_seg,
            [f"voc_2012_sem_seg_{s}" for s in ("train", "val", "trainaug")]),
    "pascal_context": (pascal_context.register_pascal_context,
                       [f"pascal_context{k}_sem_seg_{s}" for k in ("", "_59") for s in ("train", "val")]),
}


@contextlib.contextmanager
def registered_under(root, *which):
    """Re-registers the named built-in datasets under ``root`` (as if $DETECTRON2_DATASETS were
    ``root`` at import), restoring the default registration afterwards."""
    which = which or tuple(REGISTRATIONS)

    def reregister(path):
        for key in which:
            register, names = REGISTRATIONS[key]
            for name in names:
                if name in DatasetCatalog.list():
                    DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            register(str(path))

    reregister(root)
    try:
        yield
    finally:
        reregister(datasets_root())
