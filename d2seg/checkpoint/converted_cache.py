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

from .atomic_io import atomic_torch_save
from .convert import is_mmseg_checkpoint, load_mmseg_checkpoint, read_checkpoint_file
from .download import cache_root, file_sha256

__all__ = ["FORMAT", "converted_path", "read_or_convert"]

logger = logging.getLogger(__name__)
FORMAT = 1


def _in_download_cache(filename: str) -> bool:
    path = os.path.realpath(filename)
    # the configured cache first: get_cache_dir() writes, and swaps a read-only one for /tmp
    return any(path.startswith(os.path.realpath(root()) + os.sep)
               for root in (cache_root, get_cache_dir))


def converted_path(filename: str) -> str:
    stem = filename[:-len(".pth")] if filename.endswith(".pth") else filename
    return f"{stem}.d2seg-v{FORMAT}-{file_sha256(filename)[:16]}.pth"


def _read_converted(dst: str, warn: bool = True) -> Optional[Dict[str, Any]]:
    """The cached conversion, or None when there is none or it is damaged (read again at every
    call: a file truncated since this process last read it is noticed and rebuilt)."""
    if not os.path.isfile(dst):
        return None
    try:
        ckpt = read_checkpoint_file(dst)
        if not isinstance(ckpt["model"], dict) or not ckpt["model"]:
            raise TypeError("no weights in its 'model' entry")
        return {"model": ckpt["model"], "meta": ckpt.get("meta", {})}
    except (RuntimeError, KeyError, TypeError) as e:
        if warn:
            logger.warning(f"the converted checkpoint {dst} is damaged ({e}): converting again")
        return None


def _convert(filename: str, data) -> Dict[str, Any]:
    logger.info(f"{filename} is an MMSegmentation checkpoint: converting its keys")
    ckpt = load_mmseg_checkpoint(data)
    ckpt["meta"]["source"] = os.path.basename(filename)
    return ckpt


def read_or_convert(filename: str) -> Tuple[Optional[Dict[str, Any]], Any]:
    """``(converted, None)`` for an MMSegmentation checkpoint (``{"model", "meta"}`` as
    ``load_mmseg_checkpoint``; cached for downloads), ``(None, unpickled file)`` otherwise.
    A sound cached conversion is read without writing anything (no lock: read-only caches)."""
    cache = _in_download_cache(filename)
    dst = converted_path(filename) if cache else None
    ckpt = _read_converted(dst) if cache else None
    if ckpt is not None:
        logger.info(f"{filename}: using its conversion cached in {dst}")
        return ckpt, None
    data = read_checkpoint_file(filename)
    if not is_mmseg_checkpoint(data):  # e.g. ImageNet weights: nothing to convert or cache
        return None, data
    if not cache:  # d2seg does not write next to the user's own files
        return _convert(filename, data), None
    try:
        lock = file_lock(dst)
        lock.acquire()
    except OSError as e:  # a read-only cache still loads; it converts at every start
        logger.warning(f"cannot cache the converted checkpoint at {dst}: {e}")
        return _convert(filename, data), None
    try:  # ranks of one launch: one converts, the others read its result
        ckpt = _read_converted(dst, warn=False)
        if ckpt is not None:
            return ckpt, None
        ckpt = _convert(filename, data)
        try:
            atomic_torch_save(
                {"model": ckpt["model"], "meta": ckpt["meta"], "__author__": "d2seg-convert-mmseg"},
                dst,
            )
            logger.info(f"{filename}: cached its conversion as {dst}")
        except OSError as e:
            logger.warning(f"cannot cache the converted checkpoint at {dst}: {e}")
        return ckpt, None
    finally:
        lock.release()
