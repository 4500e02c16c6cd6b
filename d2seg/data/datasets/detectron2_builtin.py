"""What d2seg knows about Detectron2's own semantic-segmentation datasets, kept out of their
registration.

d2seg is a guest: importing it leaves Detectron2's datasets and their MetadataCatalog entries as
they were. Where d2seg needs more than Detectron2 records (mmseg's palette for visualisation,
export and the checkpoint-meta check; whether labels are stored already reduced), it reads the
metadata through :func:`dataset_metadata`, which completes a *copy* from the table below.
"""
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

from .ade20k import ADE20K_COLORS
from .cityscapes import CITYSCAPES_COLORS

__all__ = ["dataset_metadata", "DETECTRON2_DATASET_FACTS"]

_CITYSCAPES = {"stuff_colors": CITYSCAPES_COLORS, "reduce_zero_label": False}
# Detectron2's ADE20K names read annotations_detectron2 (prepare_ade20k_sem_seg.py): labels
# already shifted, so reduce_zero_label must not be applied again
_ADE20K = {"stuff_colors": ADE20K_COLORS, "reduce_zero_label": False}
DETECTRON2_DATASET_FACTS = {
    **{f"cityscapes_fine_sem_seg_{s}": _CITYSCAPES for s in ("train", "val", "test")},
    **{f"ade20k_sem_seg_{s}": _ADE20K for s in ("train", "val")},
}


def dataset_metadata(name: str) -> Metadata:
    """MetadataCatalog's entry for ``name``, completed with d2seg's facts where it lacks them;
    a copy (the catalog's entry is not changed)."""
    meta = MetadataCatalog.get(name).as_dict()
    for key, value in DETECTRON2_DATASET_FACTS.get(name, {}).items():
        meta.setdefault(key, value)
    return Metadata(**meta)
