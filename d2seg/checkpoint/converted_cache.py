"""Convert once: the d2seg state dict converted from a downloaded MMSegmentation checkpoint is
cached next to the download (``<file>.d2seg-v<format>-<sha256[:16] of the file>.pth``), so a
second start reads it instead of unpickling and renaming the mmseg file again. Keyed by the source
file's hash (a file replaced by hand gets a new entry) and by :data:`FORMAT` (bump it when the key
rules of mmseg.py change). Only files inside the download cache (``$FVCORE_CACHE``) get one: d2seg
does not write next to the user's own files.
"""
import logging
import os
from typing import Any, Dict, Optional, Tuple

from iopath.common.file_io import file_lock, get_cache_dir

from .convert import is_mmseg_checkpoint, load_mmseg_checkpoint, read_checkpoint_file
from .download import _remove, file_sha256

__all__ = ["FORMAT", "converted_path", "read_or_convert"]

logger = logging.getLogger(__name__)
FORMAT = 1


def _in_download_cache(filename: str) -> bool:
    root = os.path.realpath(get_cache_dir()) + os.sep
    return os.path.realpath(filename).startswith(root)


def converted_path(filename: str) -> str:
    stem = filename[:-len(".pth")] if filename.endswith(".pth") else filename
    return f"{stem}.d2seg-v{FORMAT}-{file_sha256(filename)[:16]}.pth"


def read_or_convert(filename: str) -> Tuple[Optional[Dict[str, Any]], Any]:
    """``(converted, None)`` for an MMSegmentation checkpoint (``{"model", "meta"}`` as
    ``load_mmseg_checkpoint``; cached for downloads), ``(None, unpickled file)`` otherwise."""
    if not _in_download_cache(filename):
        data = read_checkpoint_file(filename)
        if not is_mmseg_checkpoint(data):
            return None, data
        logger.info(f"{filename} is an MMSegmentation checkpoint: converting its keys")
        return load_mmseg_checkpoint(data), None
    from .checkpointer import atomic_torch_save

    dst = converted_path(filename)
    with file_lock(dst):  # ranks of one launch: one converts, the others read its result
        if os.path.isfile(dst):
            try:
                ckpt = read_checkpoint_file(dst)
                logger.info(f"{filename}: using its conversion cached in {dst}")
                return {"model": ckpt["model"], "meta": ckpt.get("meta", {})}, None
            except (RuntimeError, KeyError, TypeError) as e:
                logger.warning(f"ignoring the unreadable converted checkpoint {dst}: {e}")
        data = read_checkpoint_file(filename)
        if not is_mmseg_checkpoint(data):  # e.g. ImageNet weights: nothing to cache
            _remove(dst + ".lock")
            return None, data
        logger.info(f"{filename} is an MMSegmentation checkpoint: converting its keys")
        ckpt = load_mmseg_checkpoint(data)
        ckpt["meta"]["source"] = os.path.basename(filename)
        try:
            atomic_torch_save(
                {"model": ckpt["model"], "meta": ckpt["meta"], "__author__": "d2seg-convert-mmseg"},
                dst,
            )
            logger.info(f"{filename}: cached its conversion as {dst}")
        except OSError as e:  # a read-only cache still loads; it converts at every start
            logger.warning(f"cannot cache the converted checkpoint at {dst}: {e}")
        return ckpt, None
