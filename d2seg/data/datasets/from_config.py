"""Folder datasets declared in the config (``DATASETS.FOLDER``), as MMSegmentation's
``data=dict(train=dict(type='CustomDataset', data_root, img_dir, ann_dir, split, classes,
palette, ...))``: train and evaluate your own data with no Python.

    DATASETS:
      FOLDER:
        ROOT: "/data/mine"                 # relative dirs / split files are under it ("" = cwd)
        NAMES: ["mine_train", "mine_val"]  # one entry per split; the lists below run in parallel
        IMAGE_DIRS: ["img/train", "img/val"]
        LABEL_DIRS: ["ann/train", "ann/val"]
        SPLIT_FILES: []                    # [] or one per name ("" = every image of the folder)
        CLASSES: ["background", "crack"]
        PALETTE: []                        # [] = generated; else one [r, g, b] per class
      TRAIN: ("mine_train",)
      TEST: ("mine_val",)

Each name is registered with :func:`register_sem_seg_folder` (the Python route) when the config
is set up (``d2seg.engine.setup_cfg``, the tools).
"""
import os
from typing import Dict, Tuple

from detectron2.config import CfgNode as CN
from detectron2.data import DatasetCatalog
from detectron2.utils.file_io import PathManager

from .folder import _suffix_hint, register_sem_seg_folder

__all__ = ["add_folder_dataset_config", "register_config_datasets"]

_KEY = "DATASETS.FOLDER"
_DEFAULTS = dict(
    ROOT="",  # mmseg's data_root
    NAMES=[],
    IMAGE_DIRS=[],  # mmseg's img_dir
    LABEL_DIRS=[],  # mmseg's ann_dir
    SPLIT_FILES=[],  # mmseg's split
    CLASSES=[],
    PALETTE=[],
    IGNORE_VALUE=255,  # mmseg's ignore_index; must equal MODEL.SEM_SEG_HEAD.IGNORE_VALUE
    REDUCE_ZERO_LABEL=False,
    IMAGE_SUFFIX=".jpg",  # mmseg's img_suffix
    LABEL_SUFFIX=".png",  # mmseg's seg_map_suffix
)

# name -> the declaration that registered it in this process (a second setup_cfg in the same
# process, e.g. evaluation after training or a test, re-registers the same thing: a no-op)
_REGISTERED: Dict[str, Tuple] = {}


def add_folder_dataset_config(cfg: CN) -> None:
    """Adds ``DATASETS.FOLDER`` and those of its keys that do not exist yet (never overwrites)."""
    if "FOLDER" not in cfg.DATASETS:
        cfg.DATASETS.FOLDER = CN()
    node = cfg.DATASETS.FOLDER
    if not isinstance(node, CN):
        raise ValueError(f"{_KEY} is already a key of another project ({node!r}): d2seg's "
                         "datasets declared in the config cannot be added")
    for key, value in _DEFAULTS.items():
        if key not in node:
            node[key] = value


def _path(root: str, path: str) -> str:
    """``path`` under ``root`` unless it is absolute or a URL (as mmseg joins data_root)."""
    if root and path and not os.path.isabs(path) and "://" not in path:
        return os.path.join(root, path)
    return path


def _has_file(root: str, suffix: str) -> bool:
    """Whether any non-hidden file under ``root`` ends with ``suffix`` (stops at the first)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(x.endswith(suffix) and not x.startswith(".") for x in filenames):
            return True
    return False


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(f"{_KEY}.{msg}")


def register_config_datasets(cfg: CN) -> None:
    """Registers every dataset ``cfg.DATASETS.FOLDER`` declares; raises ValueError /
    FileNotFoundError naming the key and value of a bad declaration. Registering the same
    declaration again is a no-op; a name already registered otherwise is an error."""
    f = cfg.DATASETS.get("FOLDER", None)
    if f is None or not f.NAMES:
        return
    names, n = list(f.NAMES), len(f.NAMES)
    for key in ("IMAGE_DIRS", "LABEL_DIRS") + (("SPLIT_FILES",) if len(f.SPLIT_FILES) else ()):
        _check(len(f[key]) == n, f"{key} has {len(f[key])} entries but NAMES has {n} ({names}): "
                                 "give one per name")
    _check(len(set(names)) == n and all(isinstance(x, str) and x for x in names),
           f"NAMES={names}: names must be distinct, non-empty strings")
    classes = [str(c) for c in f.CLASSES]
    _check(len(classes) > 0, f"CLASSES is empty: list the class names of {names} (id 0 first)")
    palette = list(f.PALETTE) or None
    if palette is not None:
        _check(len(palette) == len(classes),
               f"PALETTE has {len(palette)} colours but CLASSES has {len(classes)}")
        bad = [c for c in palette if not (isinstance(c, (list, tuple)) and len(c) == 3 and all(
            isinstance(v, int) and 0 <= v <= 255 for v in c))]
        _check(not bad, f"PALETTE: {bad[0] if bad else ''} is not an [r, g, b] of ints 0..255")
    _check(0 <= f.IGNORE_VALUE <= 255, f"IGNORE_VALUE={f.IGNORE_VALUE} must be in 0..255 "
                                       "(labels are uint8)")
    _check(not f.REDUCE_ZERO_LABEL or f.IGNORE_VALUE == 255,
           f"IGNORE_VALUE={f.IGNORE_VALUE} with REDUCE_ZERO_LABEL True: reduce_zero_label maps 0 "
           "to 255 (as mmseg), so the ignore value must be 255")
    for key in ("IMAGE_SUFFIX", "LABEL_SUFFIX"):
        _check(bool(f[key]), f"{key} is empty: give the file ending, e.g. '.png'")

    for i, name in enumerate(names):
        image_dir = _path(f.ROOT, f.IMAGE_DIRS[i])
        label_dir = _path(f.ROOT, f.LABEL_DIRS[i])
        split = _path(f.ROOT, f.SPLIT_FILES[i]) if len(f.SPLIT_FILES) else ""
        for key, path in (("IMAGE_DIRS", image_dir), ("LABEL_DIRS", label_dir)):
            if not PathManager.isdir(path):
                raise FileNotFoundError(f"{_KEY}.{key}[{i}]={path!r} (dataset {name!r}) is not a "
                                        "folder" + (f" (ROOT={f.ROOT!r})" if f.ROOT else ""))
        for key, path, suffix in (("IMAGE", image_dir, f.IMAGE_SUFFIX),
                                  ("LABEL", label_dir, f.LABEL_SUFFIX)):
            if not _has_file(path, suffix):
                raise ValueError(f"{_KEY}.{key}_SUFFIX={suffix!r} matches no file under "
                                 f"{_KEY}.{key}_DIRS[{i}]={path!r} (dataset {name!r})"
                                 + _suffix_hint(path, suffix))
        if split and not PathManager.isfile(split):
            raise FileNotFoundError(f"{_KEY}.SPLIT_FILES[{i}]={split!r} (dataset {name!r}) does "
                                    "not exist")
        declaration = (image_dir, label_dir, split, tuple(classes),
                       tuple(map(tuple, palette)) if palette else None, f.IGNORE_VALUE,
                       bool(f.REDUCE_ZERO_LABEL), f.IMAGE_SUFFIX, f.LABEL_SUFFIX)
        if name in DatasetCatalog.list():
            if _REGISTERED.get(name) == declaration:
                continue
            raise ValueError(
                f"{_KEY}.NAMES[{i}]={name!r} is already registered "
                + ("by another declaration of DATASETS.FOLDER in this process"
                   if name in _REGISTERED else "(a built-in dataset or one registered in Python)")
                + ": choose another name")
        register_sem_seg_folder(
            name, image_dir, label_dir, classes, image_suffix=f.IMAGE_SUFFIX,
            label_suffix=f.LABEL_SUFFIX, ignore_label=f.IGNORE_VALUE,
            reduce_zero_label=bool(f.REDUCE_ZERO_LABEL), colors=palette,
            split_file=split or None, origin=f"declared in {_KEY}.NAMES[{i}]",
        )
        _REGISTERED[name] = declaration
