"""iSAID (aerial images, 15 classes and background) as mmseg's ``isaid.py`` reads it.

``iSAID/img_dir/{train,val}/<image>_<y0>_<y1>_<x0>_<x1>.png`` with
``ann_dir/{train,val}/<image>_<y0>_<y1>_<x0>_<x1>_instance_color_RGB.png`` (class ids, 0 =
background, 255 = padding): the 896x896 patches that ``tools/datasets/isaid.py`` cuts, as mmseg's
``tools/convert_datasets/isaid.py``. ``isaid_sem_seg_{train,val}``; background is a class
(``reduce_zero_label`` False, as mmseg's iSAIDDataset).
"""
import os

from ._common import datasets_root
from .mmseg_layout import register_img_ann_dirs

__all__ = ["ISAID_CLASSES", "ISAID_COLORS", "register_isaid"]

HINT = ("Cut the patches from the official download with: python tools/datasets/isaid.py "
        "/path/to/iSAID_download -o {base} (see docs/datasets.md).")

# mmseg's iSAIDDataset.CLASSES / PALETTE; the palette is also the colour coding of iSAID's
# *_instance_color_RGB.png semantic masks (class k <-> ISAID_COLORS[k]).
ISAID_CLASSES = [
    'background', 'ship', 'store_tank', 'baseball_diamond', 'tennis_court', 'basketball_court',
    'Ground_Track_Field', 'Bridge', 'Large_Vehicle', 'Small_Vehicle', 'Helicopter',
    'Swimming_pool', 'Roundabout', 'Soccer_ball_field', 'plane', 'Harbor',
]
ISAID_COLORS = [
    [0, 0, 0], [0, 0, 63], [0, 63, 63], [0, 63, 0], [0, 63, 127], [0, 63, 191], [0, 63, 255],
    [0, 127, 63], [0, 127, 127], [0, 0, 127], [0, 0, 191], [0, 0, 255], [0, 191, 127],
    [0, 127, 191], [0, 127, 255], [0, 100, 155],
]


def register_isaid(root: str) -> None:
    """Registers ``isaid_sem_seg_{train,val}`` under ``root/iSAID``."""
    base = os.path.join(root, "iSAID")
    register_img_ann_dirs("isaid", base, ISAID_CLASSES, ISAID_COLORS, reduce_zero_label=False,
                          label_suffix="_instance_color_RGB.png", hint=HINT.format(base=base))


register_isaid(datasets_root())
