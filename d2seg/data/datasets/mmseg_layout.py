"""Registration of the datasets laid out as mmseg's converters write them: an image folder and a
label folder per split (most often ``img_dir/<split>`` and ``ann_dir/<split>``)."""
import os
from typing import Sequence

from ._common import require_paths
from .folder import register_sem_seg_folder

__all__ = ["register_pair", "register_img_ann_dirs"]


def register_pair(name: str, image_root: str, gt_root: str, classes: Sequence[str],
                  colors: Sequence[Sequence[int]], *, image_suffix: str, label_suffix: str,
                  reduce_zero_label: bool, hint: str) -> None:
    """``register_sem_seg_folder`` whose first use fails naming a missing folder and ``hint``
    (how to make it)."""
    register_sem_seg_folder(
        name, image_root, gt_root, classes, colors=colors, image_suffix=image_suffix,
        label_suffix=label_suffix, reduce_zero_label=reduce_zero_label,
        prepare=require_paths(name, [image_root, gt_root], hint),
    )


def register_img_ann_dirs(prefix: str, base: str, classes: Sequence[str],
                          colors: Sequence[Sequence[int]], *, reduce_zero_label: bool, hint: str,
                          image_suffix: str = ".png", label_suffix: str = ".png",
                          splits: Sequence[str] = ("train", "val")) -> None:
    """Registers ``<prefix>_sem_seg_<split>``: ``base/img_dir/<split>`` with
    ``base/ann_dir/<split>``."""
    for split in splits:
        register_pair(f"{prefix}_sem_seg_{split}", os.path.join(base, "img_dir", split),
                      os.path.join(base, "ann_dir", split), classes, colors,
                      image_suffix=image_suffix, label_suffix=label_suffix,
                      reduce_zero_label=reduce_zero_label, hint=hint)
