"""Cityscapes fine (19 classes): Detectron2's own ``cityscapes_fine_sem_seg_{train,val,test}``.

Detectron2 registers these names (``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` paired with
``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``; image size from ``*_gtFine_polygons.json``)
with ``stuff_classes``, ``ignore_label`` 255 and ``evaluator_type`` "cityscapes_sem_seg" - the
same files and classes as mmseg's CityscapesDataset. d2seg leaves that registration as it is
(mmseg's palette comes from detectron2_builtin.py's table, not from its metadata); only where
Detectron2 did not register them (e.g. removed) does d2seg register them, with errors that name the
missing folder or label files and the command that makes them.
"""
import logging
import os

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES, _get_builtin_metadata
from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

from ._common import datasets_root

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_COLORS", "LABEL_ID_TO_TRAIN_ID",
           "label_ids_to_train_ids", "register_cityscapes_sem_seg"]

logger = logging.getLogger(__name__)

CITYSCAPES_CLASSES = [c["name"] for c in CITYSCAPES_CATEGORIES]
CITYSCAPES_COLORS = [list(c["color"]) for c in CITYSCAPES_CATEGORIES]

# cityscapesscripts' labels.py: labelId -> trainId for the 19 evaluated classes; every other id
# (unlabeled, ego vehicle, parking, rail track, guard rail, caravan, ...) is ignored (255).
LABEL_ID_TO_TRAIN_ID = {c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES}
_LUT = np.full(256, 255, np.uint8)
for _id, _train_id in LABEL_ID_TO_TRAIN_ID.items():
    _LUT[_id] = _train_id

PREPARE_HINT = "python tools/datasets/cityscapes.py {root}"


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """A ``*_gtFine_labelIds.png`` array -> the matching ``*_gtFine_labelTrainIds.png`` array."""
    return _LUT[np.asarray(label_ids, dtype=np.uint8)]


def _checked_loader(name, load, image_dir, gt_dir):
    def load_checked():
        for kind, path in (("image", image_dir), ("label", gt_dir)):
            if not os.path.isdir(path):
                raise FileNotFoundError(
                    f"{name}: Cityscapes {kind} folder {path!r} does not exist; expected "
                    f"$DETECTRON2_DATASETS/cityscapes/{{leftImg8bit,gtFine}}/<split>/<city>/ "
                    "(see docs/datasets.md)"
                )
        hint = PREPARE_HINT.format(root=os.path.dirname(os.path.dirname(os.path.normpath(gt_dir))))
        try:
            dicts = load()
        except AssertionError as e:  # Detectron2 asserts on the first missing labelTrainIds file
            raise FileNotFoundError(
                f"{name}: {e} (no *_gtFine_labelTrainIds.png under {gt_dir!r}); make them from "
                f"the labelIds/polygons with: {hint}") from e
        missing = [d["sem_seg_file_name"] for d in dicts
                   if not os.path.isfile(d["sem_seg_file_name"])]
        if missing:
            raise FileNotFoundError(
                f"{name}: {len(missing)} of {len(dicts)} *_gtFine_labelTrainIds.png label files "
                f"are missing (e.g. {missing[0]}); make them from the labelIds/polygons with: "
                f"{hint}"
            )
        return dicts

    return load_checked


def register_cityscapes_sem_seg(root: str) -> None:
    """Registers the Cityscapes fine semantic-segmentation splits under ``root/cityscapes`` as
    Detectron2 does, where Detectron2 has not registered them (its own are left untouched)."""
    for split in ("train", "val", "test"):
        name = f"cityscapes_fine_sem_seg_{split}"
        if name in DatasetCatalog.list():
            continue
        image_dir = os.path.join(root, "cityscapes", "leftImg8bit", split)
        gt_dir = os.path.join(root, "cityscapes", "gtFine", split)
        load = lambda x=image_dir, y=gt_dir: load_cityscapes_semantic(x, y)  # noqa: E731
        DatasetCatalog.register(name, _checked_loader(name, load, image_dir, gt_dir))
        MetadataCatalog.get(name).set(
            image_dir=image_dir, gt_dir=gt_dir, evaluator_type="cityscapes_sem_seg",
            ignore_label=255, **_get_builtin_metadata("cityscapes"))


register_cityscapes_sem_seg(datasets_root())
