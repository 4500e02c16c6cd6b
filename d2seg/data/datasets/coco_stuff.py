"""COCO-Stuff (171 classes: COCO's 80 things and 91 stuff classes) as mmseg's ``coco-stuff10k.py``
/ ``coco-stuff164k.py`` read it.

- ``coco_stuff_10k_sem_seg_{train,test}``: ``coco_stuff10k/images/{train2014,test2014}/*.jpg``
  with ``annotations/{train2014,test2014}/*_labelTrainIds.png`` (0 = unlabelled, k = class k-1:
  ``reduce_zero_label``, as mmseg's config);
- ``coco_stuff_164k_sem_seg_{train,val}``: ``coco_stuff164k/images/{train2017,val2017}/*.jpg``
  with ``annotations/{train2017,val2017}/*_labelTrainIds.png`` (0..170, 255 = unlabelled).

The ``*_labelTrainIds.png`` are made by ``tools/datasets/coco_stuff.py`` from the official
downloads, as mmseg's ``tools/convert_datasets/coco_stuff{10k,164k}.py``. The 80 thing classes
(names and COCO category ids) are Detectron2's COCO metadata; the stuff classes have ids 92..182.
"""
import os

import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from ._common import datasets_root
from .mmseg_layout import register_pair

__all__ = ["COCO_STUFF_CLASSES", "COCO_STUFF_COLORS", "COCO_STUFF_IDS", "coco_ids_to_train_ids",
           "register_coco_stuff"]

_THINGS = [c for c in COCO_CATEGORIES if c["isthing"]]
# mmseg's COCOStuffDataset.CLASSES: Detectron2's 80 thing names, then the 91 stuff names.
COCO_STUFF_CLASSES = [c["name"] for c in _THINGS] + [
    'banner', 'blanket', 'branch', 'bridge', 'building-other', 'bush', 'cabinet', 'cage',
    'cardboard', 'carpet', 'ceiling-other', 'ceiling-tile', 'cloth', 'clothes', 'clouds',
    'counter', 'cupboard', 'curtain', 'desk-stuff', 'dirt', 'door-stuff', 'fence',
    'floor-marble', 'floor-other', 'floor-stone', 'floor-tile', 'floor-wood', 'flower', 'fog',
    'food-other', 'fruit', 'furniture-other', 'grass', 'gravel', 'ground-other', 'hill',
    'house', 'leaves', 'light', 'mat', 'metal', 'mirror-stuff', 'moss', 'mountain', 'mud',
    'napkin', 'net', 'paper', 'pavement', 'pillow', 'plant-other', 'plastic', 'platform',
    'playingfield', 'railing', 'railroad', 'river', 'road', 'rock', 'roof', 'rug', 'salad',
    'sand', 'sea', 'shelf', 'sky-other', 'skyscraper', 'snow', 'solid-other', 'stairs',
    'stone', 'straw', 'structural-other', 'table', 'tent', 'textile-other', 'towel', 'tree',
    'vegetable', 'wall-brick', 'wall-concrete', 'wall-other', 'wall-panel', 'wall-stone',
    'wall-tile', 'wall-wood', 'water-other', 'waterdrops', 'window-blind', 'window-other',
    'wood',
]
# mmseg's COCOStuffDataset.PALETTE (its own colours, not Detectron2's).
COCO_STUFF_COLORS = [
    [0, 192, 64], [0, 192, 64], [0, 64, 96], [128, 192, 192], [0, 64, 64], [0, 192, 224],
    [0, 192, 192], [128, 192, 64], [0, 192, 96], [128, 192, 64], [128, 32, 192], [0, 0, 224],
    [0, 0, 64], [0, 160, 192], [128, 0, 96], [128, 0, 192], [0, 32, 192], [128, 128, 224],
    [0, 0, 192], [128, 160, 192], [128, 128, 0], [128, 0, 32], [128, 32, 0], [128, 0, 128],
    [64, 128, 32], [0, 160, 0], [0, 0, 0], [192, 128, 160], [0, 32, 0], [0, 128, 128],
    [64, 128, 160], [128, 160, 0], [0, 128, 0], [192, 128, 32], [128, 96, 128], [0, 0, 128],
    [64, 0, 32], [0, 224, 128], [128, 0, 0], [192, 0, 160], [0, 96, 128], [128, 128, 128],
    [64, 0, 160], [128, 224, 128], [128, 128, 64], [192, 0, 32], [128, 96, 0], [128, 0, 192],
    [0, 128, 32], [64, 224, 0], [0, 0, 64], [128, 128, 160], [64, 96, 0], [0, 128, 192],
    [0, 128, 160], [192, 224, 0], [0, 128, 64], [128, 128, 32], [192, 32, 128], [0, 64, 192],
    [0, 0, 32], [64, 160, 128], [128, 64, 64], [128, 0, 160], [64, 32, 128], [128, 192, 192],
    [0, 0, 160], [192, 160, 128], [128, 192, 0], [128, 0, 96], [192, 32, 0], [128, 64, 128],
    [64, 128, 96], [64, 160, 0], [0, 64, 0], [192, 128, 224], [64, 32, 0], [0, 192, 128],
    [64, 128, 224], [192, 160, 0], [0, 192, 0], [192, 128, 96], [192, 96, 128], [0, 64, 128],
    [64, 0, 96], [64, 224, 128], [128, 64, 0], [192, 0, 224], [64, 96, 128], [128, 192, 128],
    [64, 0, 224], [192, 224, 128], [128, 192, 64], [192, 0, 96], [192, 96, 0], [128, 64, 192],
    [0, 128, 96], [0, 224, 0], [64, 64, 64], [128, 128, 224], [0, 96, 0], [64, 192, 192],
    [0, 128, 224], [128, 224, 0], [64, 192, 64], [128, 128, 96], [128, 32, 128], [64, 0, 192],
    [0, 64, 96], [0, 160, 128], [192, 0, 64], [128, 64, 224], [0, 32, 128], [192, 128, 192],
    [0, 64, 224], [128, 160, 128], [192, 128, 0], [128, 64, 32], [128, 32, 64], [192, 0, 128],
    [64, 192, 32], [0, 160, 64], [64, 0, 0], [192, 192, 160], [0, 32, 64], [64, 128, 128],
    [64, 192, 160], [128, 160, 64], [64, 128, 0], [192, 192, 32], [128, 96, 192], [64, 0, 128],
    [64, 64, 32], [0, 224, 192], [192, 0, 0], [192, 64, 160], [0, 96, 192], [192, 128, 128],
    [64, 64, 160], [128, 224, 192], [192, 128, 64], [192, 64, 32], [128, 96, 64],
    [192, 0, 192], [0, 192, 32], [64, 224, 64], [64, 0, 64], [128, 192, 160], [64, 96, 64],
    [64, 128, 192], [0, 192, 160], [192, 224, 64], [64, 128, 64], [128, 192, 32],
    [192, 32, 192], [64, 64, 192], [0, 64, 32], [64, 160, 192], [192, 64, 64], [128, 64, 160],
    [64, 32, 192], [192, 192, 192], [0, 64, 160], [192, 160, 192], [192, 192, 0],
    [128, 64, 96], [192, 32, 64], [192, 64, 128], [64, 192, 96], [64, 160, 64], [64, 64, 0],
]
# The COCO category id of each class: train id k <-> COCO_STUFF_IDS[k]. COCO-Stuff's 182 ids
# leave out the 11 thing ids that COCO never annotated (12, 26, 29, ...).
COCO_STUFF_IDS = [c["id"] for c in _THINGS] + list(range(92, 183))


def _lut(offset: int) -> np.ndarray:
    # Values missing from mmseg's table (the 11 unused ids) keep their value, as in mmseg's
    # converters, which only rewrite the pixels of the ids they list.
    lut = np.arange(256, dtype=np.uint8)
    lut[np.asarray(COCO_STUFF_IDS) - 1 + offset] = np.arange(len(COCO_STUFF_IDS)) + offset
    return lut


_LUTS = {"10k": _lut(1), "164k": _lut(0)}


def coco_ids_to_train_ids(label: np.ndarray, version: str) -> np.ndarray:
    """mmseg's ``clsID_to_trID`` of ``coco_stuff10k.py`` (``version="10k"``: the .mat's COCO ids
    1..182 -> 1..171, 0 = unlabelled stays 0) or ``coco_stuff164k.py`` (``"164k"``: the PNGs'
    id-1 values 0..181 -> 0..170, 255 = unlabelled stays 255)."""
    return _LUTS[version][np.asarray(label, dtype=np.uint8)]


HINT = ("Unpack the official download into {base!r} and make the *_labelTrainIds.png with: "
        "python tools/datasets/coco_stuff.py {version} {base} (see docs/datasets.md).")
SPLITS = {
    "10k": ("coco_stuff10k", True, {"train": "train2014", "test": "test2014"}),
    "164k": ("coco_stuff164k", False, {"train": "train2017", "val": "val2017"}),
}


def register_coco_stuff(root: str) -> None:
    """Registers ``coco_stuff_10k_sem_seg_{train,test}`` and ``coco_stuff_164k_sem_seg_{train,val}``
    under ``root/coco_stuff10k`` and ``root/coco_stuff164k``."""
    for version, (folder, reduce, splits) in SPLITS.items():
        base = os.path.join(root, folder)
        for split, sub in splits.items():
            register_pair(
                f"coco_stuff_{version}_sem_seg_{split}", os.path.join(base, "images", sub),
                os.path.join(base, "annotations", sub), COCO_STUFF_CLASSES, COCO_STUFF_COLORS,
                image_suffix=".jpg", label_suffix="_labelTrainIds.png", reduce_zero_label=reduce,
                hint=HINT.format(base=base, version=version),
            )


register_coco_stuff(datasets_root())
