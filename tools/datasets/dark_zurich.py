#!/usr/bin/env python
"""Dark Zurich's validation set (a test set for Cityscapes models) from the official
``Dark_Zurich_val_anon.zip``, laid out as mmseg's ``*_dark.py`` configs read it:
``rgb_anon/val/night/GOPR0356/*_rgb_anon.png`` and ``gt/val/night/GOPR0356/*_gt_labelTrainIds.png``.

    python tools/datasets/dark_zurich.py Dark_Zurich_val_anon.zip -o $DETECTRON2_DATASETS/dark_zurich

mmseg has no converter for it (the archive is used as it unpacks); this tool unpacks it
(resumably, each file atomically) and checks that every image has its label.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _archive import unpack_tool  # noqa: E402

FOLDERS = ["rgb_anon/", "gt/"]
PAIRS = ("rgb_anon/val/night/GOPR0356", "gt/val/night/GOPR0356", "_rgb_anon.png",
         "_gt_labelTrainIds.png")


def main(argv=None):
    unpack_tool(argv, __doc__, "Dark_Zurich_val_anon.zip", FOLDERS, PAIRS)


if __name__ == "__main__":
    main()
