"""LoveDA (land cover, 7 classes) as mmseg's ``loveda.py`` reads it.

``loveDA/img_dir/{train,val}/<n>.png`` with ``ann_dir/{train,val}/<n>.png`` (0 = no-data,
k = class k-1: ``reduce_zero_label``, as mmseg's LoVEDADataset), the Rural and Urban scenes
together, as ``tools/datasets/loveda.py`` (mmseg's ``tools/convert_datasets/loveda.py``) lays
out the official ``Train.zip`` / ``Val.zip``. ``loveda_sem_seg_{train,val}``.
"""
import os

from ._common import datasets_root
from .mmseg_layout import register_img_ann_dirs

__all__ = ["LOVEDA_CLASSES", "LOVEDA_COLORS", "register_loveda"]

HINT = ("Lay out the official Train.zip / Val.zip with: python tools/datasets/loveda.py "
        "/path/to/zips -o {base} (see docs/datasets.md).")

# mmseg's LoveDADataset.CLASSES / PALETTE.
LOVEDA_CLASSES = ['background', 'building', 'road', 'water', 'barren', 'forest', 'agricultural']
LOVEDA_COLORS = [[255, 255, 255], [255, 0, 0], [255, 255, 0], [0, 0, 255], [159, 129, 183],
                 [0, 255, 0], [255, 195, 128]]


def register_loveda(root: str) -> None:
    """Registers ``loveda_sem_seg_{train,val}`` under ``root/loveDA``."""
    base = os.path.join(root, "loveDA")
    register_img_ann_dirs("loveda", base, LOVEDA_CLASSES, LOVEDA_COLORS, reduce_zero_label=True,
                          hint=HINT.format(base=base))


register_loveda(datasets_root())
