"""ISPRS Potsdam and Vaihingen (aerial, 6 classes) as mmseg's ``potsdam.py`` / ``vaihingen.py``
read them.

``{potsdam,vaihingen}/img_dir/{train,val}/*.png`` with ``ann_dir/{train,val}/*.png``: the 512x512
tiles that ``tools/datasets/isprs.py`` cuts from the official tiles, as mmseg's
``tools/convert_datasets/{potsdam,vaihingen}.py``. In the labels 0 is the (eroded) boundary /
unknown colour and k is class k-1: ``reduce_zero_label``, as PotsdamDataset and ISPRSDataset.
``potsdam_sem_seg_{train,val}`` and ``vaihingen_sem_seg_{train,val}``.
"""
import os

from ._common import datasets_root
from .mmseg_layout import register_img_ann_dirs

__all__ = ["ISPRS_CLASSES", "ISPRS_COLORS", "register_isprs"]

HINT = ("Cut the tiles from the official zips with: python tools/datasets/isprs.py {kind} "
        "/path/to/zips -o {base} (see docs/datasets.md).")

# mmseg's PotsdamDataset / ISPRSDataset CLASSES and PALETTE (the same for both); the palette is
# ISPRS' colour coding of the labels.
ISPRS_CLASSES = ['impervious_surface', 'building', 'low_vegetation', 'tree', 'car', 'clutter']
ISPRS_COLORS = [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0],
                [255, 0, 0]]


def register_isprs(root: str) -> None:
    """Registers ``{potsdam,vaihingen}_sem_seg_{train,val}`` under ``root/{potsdam,vaihingen}``."""
    for kind in ("potsdam", "vaihingen"):
        base = os.path.join(root, kind)
        register_img_ann_dirs(kind, base, ISPRS_CLASSES, ISPRS_COLORS, reduce_zero_label=True,
                              hint=HINT.format(kind=kind, base=base))


register_isprs(datasets_root())
