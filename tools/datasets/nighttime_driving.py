#!/usr/bin/env python
"""Nighttime Driving's test set (a test set for Cityscapes models) from the official
``NighttimeDrivingTest.zip``, laid out as mmseg's ``*_night_driving.py`` configs read it:
``leftImg8bit/test/night/*_leftImg8bit.png`` and
``gtCoarse_daytime_trainvaltest/test/night/*_gtCoarse_labelTrainIds.png``.

    python tools/datasets/nighttime_driving.py NighttimeDrivingTest.zip \\
        -o $DETECTRON2_DATASETS/NighttimeDrivingTest

mmseg has no converter for it (the archive is used as it unpacks); this tool unpacks it
(resumably, each file atomically) and checks that every image has its label.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _archive import unpack_tool  # noqa: E402

FOLDERS = ["leftImg8bit/", "gtCoarse_daytime_trainvaltest/"]
PAIRS = ("leftImg8bit/test/night", "gtCoarse_daytime_trainvaltest/test/night", "_leftImg8bit.png",
         "_gtCoarse_labelTrainIds.png")


def main(argv=None):
    unpack_tool(argv, __doc__, "NighttimeDrivingTest.zip", FOLDERS, PAIRS)


if __name__ == "__main__":
    main()
