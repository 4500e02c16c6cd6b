"""Does an MMSegmentation checkpoint's ``meta.CLASSES`` / ``meta.PALETTE`` agree with the dataset
the config names? A checkpoint trained on another dataset with the same class count loads without any
shape error and predicts the wrong classes: say so, naming the first differing class."""
import logging
from typing import Dict, Optional, Sequence

__all__ = ["metadata_disagreement", "warn_if_metadata_differs"]

logger = logging.getLogger(__name__)


def _first_difference(a: Sequence, b: Sequence) -> Optional[int]:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def metadata_disagreement(meta: Dict, dataset_meta,
                          source: str = "the checkpoint") -> Optional[str]:
    """A message naming the first class (or colour) where ``meta`` (``classes``/``palette`` of a
    converted mmseg checkpoint) and ``dataset_meta`` (Detectron2 Metadata: ``stuff_classes``,
    ``stuff_colors``) differ; None when they agree or either side has none."""
    name = getattr(dataset_meta, "name", "the dataset")
    # stripped: mmseg's ADE20K says 'bed ' where the dataset says 'bed'
    ck_classes = [str(c).strip() for c in meta.get("classes") or []]
    ds_classes = [str(c).strip() for c in dataset_meta.get("stuff_classes", None) or []]
    if ck_classes and ds_classes:
        i = _first_difference(ck_classes, ds_classes)
        if i is not None:
            ck = repr(ck_classes[i]) if i < len(ck_classes) else "(none)"
            ds = repr(ds_classes[i]) if i < len(ds_classes) else "(none)"
            return (f"{source} was trained on other classes than dataset {name!r}: class {i} is "
                    f"{ck} in the checkpoint, {ds} in the dataset ({len(ck_classes)} vs "
                    f"{len(ds_classes)} classes)")
    ck_colors = [tuple(int(v) for v in c) for c in meta.get("palette") or []]
    ds_colors = [tuple(int(v) for v in c) for c in dataset_meta.get("stuff_colors", None) or []]
    if ck_colors and ds_colors:
        i = _first_difference(ck_colors, ds_colors)
        if i is not None:
            cls = repr(ds_classes[i]) if i < len(ds_classes) else str(i)
            ck = list(ck_colors[i]) if i < len(ck_colors) else "(none)"
            ds = list(ds_colors[i]) if i < len(ds_colors) else "(none)"
            return (f"{source}'s palette differs from dataset {name!r}'s: class {i} ({cls}) is "
                    f"{ck} in the checkpoint, {ds} in the dataset")
    return None


def warn_if_metadata_differs(meta: Dict, dataset_name: str, source: str = "the checkpoint") -> bool:
    """Logs a WARNING when :func:`metadata_disagreement` finds one; True if it did."""
    if not dataset_name or not meta:
        return False
    from ..data.datasets.detectron2_builtin import dataset_metadata

    msg = metadata_disagreement(meta, dataset_metadata(dataset_name), source)
    if msg:
        logger.warning(msg)
    return msg is not None
