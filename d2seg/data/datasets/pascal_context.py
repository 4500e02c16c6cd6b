"""Pascal Context (VOC2010 images) as mmseg's ``pascal_context.py`` / ``pascal_context_59.py``.

``VOCdevkit/VOC2010/JPEGImages/*.jpg`` with ``SegmentationClassContext/*.png`` (0 = background,
1..59 = the 59 classes; made by ``tools/datasets/pascal_context.py``) selected by
``ImageSets/SegmentationContext/{train,val}.txt``:

- ``pascal_context_sem_seg_{train,val}``: 60 classes, background included (PascalContextDataset);
- ``pascal_context_59_sem_seg_{train,val}``: 59 classes, background ignored through
  ``reduce_zero_label`` (PascalContextDataset59).
"""
import os

from ._common import datasets_root, require_paths
from .folder import register_sem_seg_folder

__all__ = ["PASCAL_CONTEXT_CLASSES", "PASCAL_CONTEXT_COLORS", "register_pascal_context"]

HINT = ("Extract VOCtrainval_03-May-2010.tar into {root!r} (VOCdevkit/VOC2010/...) and make the "
        "labels with: python tools/datasets/pascal_context.py {root}/VOCdevkit "
        "--json trainval_merged.json (see docs/datasets.md).")

# mmseg's PascalContextDataset.CLASSES / PALETTE; PascalContextDataset59's are these without
# 'background'.
PASCAL_CONTEXT_CLASSES = [
    'background', 'aeroplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat',
    'book', 'bottle', 'building', 'bus', 'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth',
    'computer', 'cow', 'cup', 'curtain', 'dog', 'door', 'fence', 'floor', 'flower', 'food',
    'grass', 'ground', 'horse', 'keyboard', 'light', 'motorbike', 'mountain', 'mouse', 'person',
    'plate', 'platform', 'pottedplant', 'road', 'rock', 'sheep', 'shelves', 'sidewalk', 'sign',
    'sky', 'snow', 'sofa', 'table', 'track', 'train', 'tree', 'truck', 'tvmonitor', 'wall',
    'water', 'window', 'wood',
]
PASCAL_CONTEXT_COLORS = [
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80],
    [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7],
    [150, 5, 61], [120, 120, 70], [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4],
    [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255],
    [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
    [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10], [7, 255, 255],
    [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255],
    [140, 140, 140], [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0],
    [153, 255, 0], [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
]


def register_pascal_context(root: str) -> None:
    """Registers ``pascal_context_sem_seg_{train,val}`` (60 classes) and
    ``pascal_context_59_sem_seg_{train,val}`` (59) under ``root/VOCdevkit/VOC2010``."""
    base = os.path.join(root, "VOCdevkit", "VOC2010")
    image_root = os.path.join(base, "JPEGImages")
    gt_root = os.path.join(base, "SegmentationClassContext")
    for split in ("train", "val"):
        split_file = os.path.join(base, "ImageSets", "SegmentationContext", f"{split}.txt")
        for name, classes, colors, reduce in (
            (f"pascal_context_sem_seg_{split}", PASCAL_CONTEXT_CLASSES, PASCAL_CONTEXT_COLORS,
             False),
            (f"pascal_context_59_sem_seg_{split}", PASCAL_CONTEXT_CLASSES[1:],
             PASCAL_CONTEXT_COLORS[1:], True),
        ):
            register_sem_seg_folder(
                name, image_root, gt_root, classes, colors=colors, split_file=split_file,
                reduce_zero_label=reduce,
                prepare=require_paths(name, [image_root, gt_root, split_file],
                                      HINT.format(root=root)),
            )


register_pascal_context(datasets_root())
