"""Nighttime Driving's test set (night-time, Cityscapes' 19 classes, coarse labels) as mmseg's
NightDrivingDataset reads it in the ``*_night_driving.py`` configs, which test a Cityscapes model.

``NighttimeDrivingTest/leftImg8bit/test/night/*_leftImg8bit.png`` with
``gtCoarse_daytime_trainvaltest/test/night/*_gtCoarse_labelTrainIds.png`` (19 trainIds,
255 = ignore), as the official ``NighttimeDrivingTest.zip`` unpacks
(``tools/datasets/nighttime_driving.py`` does it and checks it). ``nighttime_driving_sem_seg_test``.
"""
import os

from ._common import datasets_root
from .cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_COLORS
from .mmseg_layout import register_pair

__all__ = ["register_nighttime_driving"]

HINT = ("Unpack NighttimeDrivingTest.zip with: python tools/datasets/nighttime_driving.py "
        "NighttimeDrivingTest.zip -o {base} (see docs/datasets.md).")


def register_nighttime_driving(root: str) -> None:
    """Registers ``nighttime_driving_sem_seg_test`` under ``root/NighttimeDrivingTest``."""
    base = os.path.join(root, "NighttimeDrivingTest")
    image_root = os.path.join(base, "leftImg8bit", "test", "night")
    gt_root = os.path.join(base, "gtCoarse_daytime_trainvaltest", "test", "night")
    register_pair(  # mmseg's NightDrivingDataset is a CityscapesDataset: its classes
        "nighttime_driving_sem_seg_test", image_root, gt_root, CITYSCAPES_CLASSES, CITYSCAPES_COLORS,
        image_suffix="_leftImg8bit.png", label_suffix="_gtCoarse_labelTrainIds.png", reduce_zero_label=False,
        hint=HINT.format(base=base),
    )


register_nighttime_driving(datasets_root())
