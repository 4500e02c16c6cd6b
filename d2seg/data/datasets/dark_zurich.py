"""Dark Zurich's validation set (night-time, Cityscapes' 19 classes) as mmseg's DarkZurichDataset
reads it in the ``*_dark.py`` configs, which test a Cityscapes model on it.

``dark_zurich/rgb_anon/val/night/GOPR0356/*_rgb_anon.png`` with
``gt/val/night/GOPR0356/*_gt_labelTrainIds.png`` (19 trainIds, 255 = ignore), as the official
``Dark_Zurich_val_anon.zip`` unpacks (``tools/datasets/dark_zurich.py`` does it and checks it).
``dark_zurich_sem_seg_val``: a test set only.
"""
import os

from ._common import datasets_root
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_COLORS
from .mmseg_layout import register_pair

__all__ = ["register_dark_zurich"]

HINT = ("Unpack Dark_Zurich_val_anon.zip with: python tools/datasets/dark_zurich.py "
        "Dark_Zurich_val_anon.zip -o {base} (see docs/datasets.md).")


def register_dark_zurich(root: str) -> None:
    """Registers ``dark_zurich_sem_seg_val`` under ``root/dark_zurich``."""
    base = os.path.join(root, "dark_zurich")
    image_root = os.path.join(base, "rgb_anon", "val", "night", "GOPR0356")
    gt_root = os.path.join(base, "gt", "val", "night", "GOPR0356")
    register_pair(  # mmseg's DarkZurichDataset is a CityscapesDataset: its classes
        "dark_zurich_sem_seg_val", image_root, gt_root, CITYSCAPES_CLASSES, CITYSCAPES_COLORS,
        image_suffix="_rgb_anon.png", label_suffix="_gt_labelTrainIds.png", reduce_zero_label=False,
        hint=HINT.format(base=base),
    )


register_dark_zurich(datasets_root())
