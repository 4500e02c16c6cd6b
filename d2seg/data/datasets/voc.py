"""Pascal VOC 2012 (21 classes, 0 = background, 255 = object boundaries / ignore) as mmseg.

``VOCdevkit/VOC2012/JPEGImages/*.jpg`` with ``SegmentationClass/*.png`` (palette PNGs whose
indices are the class ids) selected by ``ImageSets/Segmentation/{train,val}.txt``:

- ``voc_2012_sem_seg_train`` (1464) and ``voc_2012_sem_seg_val`` (1449);
- ``voc_2012_sem_seg_trainaug`` (10582), mmseg's ``pascal_voc12_aug.py``: ``train.txt`` with
  ``SegmentationClass`` plus ``aug.txt`` (SBD images not in VOC train/val) with
  ``SegmentationClassAug``; both made from SBD by ``tools/datasets/voc_aug.py``.
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ._common import datasets_root, require_paths
from .folder import load_sem_seg_folder, register_sem_seg_folder

__all__ = ["VOC_CLASSES", "VOC_COLORS", "register_pascal_voc_sem_seg"]

HINT = ("Extract VOCtrainval_11-May-2012.tar into {root!r} (VOCdevkit/VOC2012/...); for trainaug "
        "also run: python tools/datasets/voc_aug.py {root}/VOCdevkit <SBD folder> (see "
        "docs/datasets.md).")

# mmseg's PascalVOCDataset.CLASSES / PALETTE
VOC_CLASSES = [
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
    'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
    'train', 'tvmonitor',
]
VOC_COLORS = [
    [0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
    [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0], [64, 0, 128],
    [192, 0, 128], [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0], [0, 192, 0],
    [128, 192, 0], [0, 64, 128],
]


def register_pascal_voc_sem_seg(root: str) -> None:
    """Registers ``voc_2012_sem_seg_{train,val,trainaug}`` under ``root/VOCdevkit/VOC2012``."""
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    image_root = os.path.join(base, "JPEGImages")
    hint = HINT.format(root=root)

    def split_paths(ann_dir, split):
        return os.path.join(base, ann_dir), os.path.join(base, "ImageSets", "Segmentation", split)

    for split in ("train", "val"):
        name = f"voc_2012_sem_seg_{split}"
        gt_root, split_file = split_paths("SegmentationClass", f"{split}.txt")
        register_sem_seg_folder(
            name, image_root, gt_root, VOC_CLASSES, colors=VOC_COLORS, split_file=split_file,
            prepare=require_paths(name, [image_root, gt_root, split_file], hint),
        )

    # trainaug = mmseg's ConcatDataset of (SegmentationClass, train.txt) and
    # (SegmentationClassAug, aug.txt)
    name = "voc_2012_sem_seg_trainaug"
    parts = [split_paths("SegmentationClass", "train.txt"),
             split_paths("SegmentationClassAug", "aug.txt")]
    check = require_paths(name, [image_root] + [p for part in parts for p in part], hint)

    def load_trainaug():
        check()
        dicts = []
        for gt_root, split_file in parts:
            dicts += load_sem_seg_folder(image_root, gt_root, ".jpg", ".png", split_file)
        for d in dicts:
            d["reduce_zero_label"] = False
        return dicts

    DatasetCatalog.register(name, load_trainaug)
    MetadataCatalog.get(name).set(
        stuff_classes=list(VOC_CLASSES), stuff_colors=[list(c) for c in VOC_COLORS],
        ignore_label=255, evaluator_type="sem_seg", image_root=image_root,
        sem_seg_root=parts[1][0], reduce_zero_label=False,
    )


register_pascal_voc_sem_seg(datasets_root())
