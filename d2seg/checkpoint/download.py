"""Verified downloads: iopath's ``HTTPURLHandler`` (cache in ``$FVCORE_CACHE``, iopath's file lock
and ``download``) plus what d2seg needs for published checkpoints:

- ``D2SEG_MIRROR`` replaces ``https://download.openmmlab.com`` in the URL downloaded from; the
  cache path stays that of the canonical URL, so a cache filled through a mirror (or on another
  machine) serves the canonical names too;
- a file named ``...-<8 hex>.pth`` (mmseg's, open-mmlab's and torchvision's convention: the first
  hex digits of the file's sha256) is checked by every process that resolves it, downloaded or
  found in the cache; a wrong file is deleted and :class:`ChecksumError` names the URL and both
  prefixes;
- a failed transfer (404, refused connection, truncated body) raises :class:`DownloadError`
  naming the URL and the cache path where the file may be placed by hand, leaving nothing in the
  cache (iopath downloads to ``<file>.tmp`` and removes it; the lock file is removed here).
"""
import hashlib
import logging
import os
import re
import sys
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlparse

from iopath.common.download import download
from iopath.common.file_io import HTTPURLHandler, file_lock, get_cache_dir

from .catalog import apply_mirror

__all__ = ["VerifiedHTTPURLHandler", "DownloadError", "ChecksumError", "file_sha256",
           "expected_sha256_prefix", "cache_path_for"]

logger = logging.getLogger(__name__)
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")
_sha_memo: Dict[Tuple[str, int, int], str] = {}


class DownloadError(OSError):
    """A checkpoint URL that could not be downloaded (nothing is left in the cache)."""


class ChecksumError(OSError):
    """A downloaded or cached file whose sha256 does not start with the hex digits of its name."""


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file (memoised on path, size and mtime: a checkpoint is hashed once
    per process even when both the download check and the conversion cache need it)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _sha_memo[key] = h.hexdigest()
    return _sha_memo[key]


def expected_sha256_prefix(url: str) -> Optional[str]:
    """The hex digits a ``...-<hex>.pth`` file name promises, or None."""
    m = _HASH_IN_NAME.search(urlparse(url).path)
    return m.group(1) if m else None


def cache_path_for(url: str, cache_dir: Optional[str] = None) -> str:
    """Where iopath caches ``url``: ``<cache>/<url path>`` (``$FVCORE_CACHE``, default
    ``~/.torch/iopath_cache``)."""
    parsed = urlparse(url)
    return os.path.join(get_cache_dir(cache_dir), parsed.path.lstrip("/"))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class VerifiedHTTPURLHandler(HTTPURLHandler):
    """Replaces iopath's ``HTTPURLHandler`` in Detectron2's PathManager (same prefixes, cache and
    lock; see the module docstring for what it adds)."""

    def _get_local_path(self, path: str, force: bool = False, cache_dir: Optional[str] = None,
                        **kwargs: Any) -> str:
        self._check_kwargs(kwargs)
        if not force and path in self.cache_map and os.path.isfile(self.cache_map[path]):
            return self.cache_map[path]
        cached = cache_path_for(path, cache_dir)
        source = apply_mirror(path)
        # iopath's lock: one process of a launch downloads, the others wait, then all verify
        with file_lock(cached):
            if force:
                _remove(cached)
            if not os.path.isfile(cached):
                via = f" (mirror of {path})" if source != path else ""
                logger.info(f"Downloading {source}{via} to {cached} ...")
                try:
                    download(source, os.path.dirname(cached), filename=os.path.basename(cached),
                             progress=sys.stderr.isatty())
                except Exception as e:
                    _remove(cached + ".tmp")
                    _remove(cached + ".lock")
                    raise DownloadError(
                        f"cannot download {source}{via}: {type(e).__name__}: {e}. Nothing was "
                        f"cached; on a machine without access, place the file by hand at "
                        f"{cached} (docs/checkpoints.md, 'Offline machines')"
                    ) from e
            self._verify(path, source, cached)
        self.cache_map[path] = cached
        return cached

    @staticmethod
    def _verify(url: str, source: str, cached: str) -> None:
        expected = expected_sha256_prefix(url)
        if expected is None:
            return
        actual = file_sha256(cached)
        if not actual.startswith(expected):
            _remove(cached)
            _remove(cached + ".lock")
            via = f" (downloaded from {source})" if source != url else ""
            raise ChecksumError(
                f"{url}{via}: sha256 of the file starts with {actual[:len(expected)]}, its name "
                f"promises {expected} (truncated, corrupt or substituted file); deleted {cached}"
            )
