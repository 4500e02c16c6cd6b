"""Registers an image folder + label folder as a Detectron2 semantic-segmentation dataset."""
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

__all__ = ["register_sem_seg_folder", "load_sem_seg_folder", "default_colors"]

logger = logging.getLogger(__name__)


def default_colors(n: int) -> List[List[int]]:
    """Pascal VOC's colour map (bit-interleaved ids): distinct, deterministic colours."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append([r, g, b])
    return colors


def _list_files(root: str, suffix: str) -> Dict[str, str]:
    """{relative path without ``suffix``: path} of the files under ``root`` (recursive) that end
    with ``suffix``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.endswith(suffix) and not f.startswith("."):
                path = os.path.join(dirpath, f)
                out[os.path.relpath(path, root)[: -len(suffix)]] = path
    return out


def _suffix_hint(root: str, suffix: str) -> str:
    seen = set()
    for _, _, filenames in os.walk(root):
        seen.update(os.path.splitext(f)[1] or f for f in filenames)
        if len(seen) > 5:
            break
    return f" (found extensions: {sorted(seen)})" if seen else " (the folder is empty)"


def _few(keys: Sequence[str], n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _load_split(image_root, gt_root, image_suffix, label_suffix, split_file):
    if not PathManager.isfile(split_file):
        raise FileNotFoundError(f"split file {split_file!r} does not exist")
    with PathManager.open(split_file) as f:
        stems = sorted({line.strip() for line in f if line.strip()})
    if not stems:
        raise ValueError(f"split file {split_file!r} lists no samples")
    pairs = [(s, os.path.join(image_root, s + image_suffix),
              os.path.join(gt_root, s + label_suffix)) for s in stems]
    no_image = [s for s, img, _ in pairs if not PathManager.isfile(img)]
    no_label = [s for s, _, gt in pairs if not PathManager.isfile(gt)]
    if no_image or no_label:
        msg = [f"{split_file!r} lists samples that are missing:"]
        if no_image:
            msg.append(f"{len(no_image)} without an image (<stem>{image_suffix} in {image_root!r})"
                       f": {_few(no_image)}")
        if no_label:
            msg.append(f"{len(no_label)} without a label (<stem>{label_suffix} in {gt_root!r})"
                       f": {_few(no_label)}")
        raise ValueError("\n  ".join(msg))
    return [{"file_name": img, "sem_seg_file_name": gt} for _, img, gt in pairs]


def load_sem_seg_folder(image_root: str, gt_root: str, image_suffix: str = ".jpg",
                        label_suffix: str = ".png", split_file: Optional[str] = None) -> List[dict]:
    """Dataset dicts ``{file_name, sem_seg_file_name}``, sorted, pairing ``<stem><image_suffix>``
    with ``<stem><label_suffix>`` at the same relative path (subfolders included, as mmseg's
    CustomDataset with img_suffix / seg_map_suffix). Every image needs a label and vice versa,
    unless ``split_file`` (one stem per line, mmseg's ``split``) selects the samples."""
    for kind, root in (("image", image_root), ("label", gt_root)):
        if not PathManager.isdir(root):
            raise FileNotFoundError(f"{kind} folder {root!r} does not exist (or is not a folder)")
    if split_file is not None:
        return _load_split(image_root, gt_root, image_suffix, label_suffix, split_file)
    images = _list_files(image_root, image_suffix)
    labels = _list_files(gt_root, label_suffix)
    if not images:
        raise ValueError(f"no '*{image_suffix}' images under {image_root!r}"
                         + _suffix_hint(image_root, image_suffix))
    no_label = images.keys() - labels.keys()
    no_image = labels.keys() - images.keys()
    if no_label or no_image:
        msg = [f"images in {image_root!r} and labels in {gt_root!r} do not pair up "
               f"(<stem>{image_suffix} <-> <stem>{label_suffix}):"]
        if no_label:
            msg.append(f"{len(no_label)} image(s) without a label: {_few(no_label)}")
        if no_image:
            msg.append(f"{len(no_image)} label(s) without an image: {_few(no_image)}")
        raise ValueError("\n  ".join(msg))
    dicts = [{"file_name": images[k], "sem_seg_file_name": labels[k]} for k in sorted(images)]
    logger.info(f"Loaded {len(dicts)} images with labels from {image_root}")
    return dicts


def register_sem_seg_folder(
    name: str,
    image_root: str,
    gt_root: str,
    classes: Sequence[str],
    *,
    image_suffix: str = ".jpg",
    label_suffix: str = ".png",
    ignore_label: int = 255,
    reduce_zero_label: bool = False,
    colors: Optional[Sequence[Sequence[int]]] = None,
    evaluator_type: str = "sem_seg",
    split_file: Optional[str] = None,
    prepare: Optional[Callable[[], None]] = None,
    origin: Optional[str] = None,
) -> None:
    """Registers ``name`` in DatasetCatalog (lazily: folders are listed when the dataset is
    first requested) and MetadataCatalog (``stuff_classes``, ``stuff_colors``, ``ignore_label``,
    ``evaluator_type``, ``image_root``, ``sem_seg_root``, ``reduce_zero_label``).

    Labels are single-channel PNGs of class ids. With ``reduce_zero_label`` the files hold
    0 = ignore and k = class k-1 (ADE20K); ``classes`` lists the classes *after* that shift.
    ``split_file`` (one stem per line) selects a subset, e.g. Pascal VOC's ImageSets/*.txt.
    ``prepare``, if given, runs before the folders are listed (e.g. to generate or download
    the data on first use). ``origin`` (e.g. the config key that declared it) is named in the
    errors of listing the folders.
    """
    classes = list(classes)
    colors = [list(c) for c in colors] if colors is not None else default_colors(len(classes))
    if len(colors) != len(classes):
        raise ValueError(f"{name}: {len(classes)} classes but {len(colors)} colors")

    def load():
        if prepare is not None:
            prepare()
        try:
            dicts = load_sem_seg_folder(image_root, gt_root, image_suffix, label_suffix, split_file)
        except (FileNotFoundError, ValueError) as e:
            if origin is None:
                raise
            raise type(e)(f"dataset {name!r} ({origin}): {e}") from e
        for d in dicts:  # per sample, so that datasets mixed in one loader each keep their own
            d["reduce_zero_label"] = reduce_zero_label
        return dicts

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        stuff_classes=classes,
        stuff_colors=colors,
        ignore_label=ignore_label,
        evaluator_type=evaluator_type,
        image_root=image_root,
        sem_seg_root=gt_root,
        reduce_zero_label=reduce_zero_label,
    )
