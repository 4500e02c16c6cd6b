"""Verified downloads: iopath's ``HTTPURLHandler`` (cache in ``$FVCORE_CACHE``, iopath's file lock)
plus what d2seg needs for published checkpoints in a cache that many jobs share (registered for
d2seg's own URLs only, handlers.py):

- ``D2SEG_MIRROR`` replaces ``https://download.openmmlab.com`` in the URL downloaded from; the
  cache path stays that of the canonical URL, so a cache filled through a mirror (or on another
  machine) serves the canonical names too;
- a file named ``...-<8 hex>.pth`` (mmseg's, open-mmlab's and torchvision's convention: the first
  hex digits of the file's sha256) is checked each time it is resolved, downloaded or found in
  the cache. A sound cached file is served without writing anything (no lock file: a read-only
  shared cache works). A cached file that does not match (truncated, a wrong copy placed by hand)
  is never deleted: it is renamed ``<file>.mismatch-<time>`` and the file is downloaded again;
  a download that does not match is discarded and :class:`ChecksumError` names the URL and both
  prefixes;
- a download is written to a temporary file (atomic_io.py), verified, then renamed into place; a
  failed transfer (404, refused connection, truncated body) raises :class:`DownloadError` naming
  the URL and the cache path where the file may be placed by hand, and caches nothing;
- processes downloading one file take turns on iopath's lock ``<file>.lock`` (an OS lock, released
  when its holder dies); the lock file stays: removing it while another process waits on it
  would let a third one lock a new file and download at the same time.
"""
import hashlib
import logging
import os
import re
import sys
import time
from typing import Any, Dict, Optional, Tuple
from urllib import request
from urllib.parse import urlparse

import tqdm
from iopath.common.file_io import HTTPURLHandler, file_lock, get_cache_dir

from .atomic_io import remove_if_exists, temp_file_for
from .catalog import apply_mirror

__all__ = ["VerifiedHTTPURLHandler", "DownloadError", "ChecksumError", "file_sha256",
           "expected_sha256_prefix", "cache_root", "cache_path_for", "move_aside"]

logger = logging.getLogger(__name__)
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth$")
_sha_memo: Dict[Tuple, str] = {}


class DownloadError(OSError):
    """A checkpoint URL that could not be downloaded (nothing is left in the cache)."""


class ChecksumError(OSError):
    """A downloaded or cached file whose sha256 does not start with the hex digits of its name."""


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file, memoised per process on the file's identity: inode, size,
    mtime and ctime (any write, copy or rename over it changes ctime, so a file damaged after it
    was hashed is hashed again)."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
           st.st_ctime_ns)
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


def cache_root(cache_dir: Optional[str] = None) -> str:
    """The cache folder configured: ``cache_dir``, else ``$FVCORE_CACHE``, else
    ``~/.torch/iopath_cache`` (iopath's ``get_cache_dir`` without its fallback, see below)."""
    return os.path.expanduser(cache_dir or os.getenv("FVCORE_CACHE", "~/.torch/iopath_cache"))


def cache_path_for(url: str, cache_dir: Optional[str] = None) -> str:
    """Where iopath caches ``url``: ``<cache>/<url path>``. A file already in the configured cache
    is served from there even when that folder is read-only (a shared cache), where iopath's
    ``get_cache_dir`` would switch to ``/tmp/iopath_cache``; a file to download goes where
    ``get_cache_dir`` says."""
    rel = urlparse(url).path.lstrip("/")
    configured = os.path.join(cache_root(cache_dir), rel)
    if os.path.isfile(configured):
        return configured
    return os.path.join(get_cache_dir(cache_dir), rel)


def _matches(url: str, path: str) -> bool:
    expected = expected_sha256_prefix(url)
    return expected is None or file_sha256(path).startswith(expected)


def move_aside(path: str, reason: str = "mismatch") -> str:
    """Renames ``path`` to a free ``<path>.<reason>-<time>`` next to it (files placed by hand are
    never deleted); returns the new name."""
    stem = f"{path}.{reason}-{time.strftime('%Y%m%d-%H%M%S')}"
    aside, n = stem, 1
    while os.path.lexists(aside):
        aside, n = f"{stem}.{n}", n + 1
    os.rename(path, aside)
    return aside


def _progress_hook(name: str):
    """A tqdm bar for ``urlretrieve`` on a terminal (as iopath's ``download``), else None."""
    if not sys.stderr.isatty():
        return None, None
    bar = tqdm.tqdm(unit="B", unit_scale=True, miniters=1, desc=name, leave=True)

    def hook(blocks: int, block_size: int, total: int) -> None:
        if total > 0:
            bar.total = total
        bar.update(blocks * block_size - bar.n)

    return hook, bar


class VerifiedHTTPURLHandler(HTTPURLHandler):
    """Replaces iopath's ``HTTPURLHandler`` in Detectron2's PathManager (same prefixes, cache and
    lock; see the module docstring for what it adds)."""

    def _get_local_path(self, path: str, force: bool = False, cache_dir: Optional[str] = None,
                        **kwargs: Any) -> str:
        self._check_kwargs(kwargs)
        cached = cache_path_for(path, cache_dir)
        # checked at every call, also for a file this process resolved before (it may have been
        # damaged since); a sound file is served without writing anything
        if not force and os.path.isfile(cached) and _matches(path, cached):
            self.cache_map[path] = cached
            return cached
        source = apply_mirror(path)
        try:
            lock = file_lock(cached)
            lock.acquire()
        except OSError as e:  # e.g. a read-only shared cache that lacks or holds a bad file
            state = "holds a file that does not match its name" if os.path.isfile(cached) \
                else "lacks it"
            error = ChecksumError if os.path.isfile(cached) else DownloadError
            raise error(f"{path}: the cache {state} ({cached}) and cannot be written to "
                        f"({type(e).__name__}: {e}); place the file there by hand "
                        f"(docs/checkpoints.md, 'Offline machines')") from e
        # one process of a launch downloads, the others wait, then find the file
        try:
            aside = None
            if os.path.isfile(cached):
                if not force and _matches(path, cached):  # downloaded meanwhile by another
                    self.cache_map[path] = cached
                    return cached
                if not _matches(path, cached):
                    aside = move_aside(cached)
                    logger.warning(
                        f"{cached} does not match the sha256 its name promises "
                        f"({expected_sha256_prefix(path)}...; truncated or another file): moved "
                        f"it to {aside}, downloading {path} again")
            # iopath's own temporary name: a download killed before; this process holds the lock
            remove_if_exists(cached + ".tmp")
            self._download(path, source, cached, aside)
        finally:
            lock.release()
        self.cache_map[path] = cached
        return cached

    @staticmethod
    def _download(url: str, source: str, cached: str, aside: Optional[str]) -> None:
        via = f" (mirror of {url})" if source != url else ""
        moved = f"; the mismatching file found there was moved to {aside}" if aside else ""
        logger.info(f"Downloading {source}{via} to {cached} ...")
        with temp_file_for(cached) as tmp:
            hook, bar = _progress_hook(os.path.basename(cached))
            try:
                request.urlretrieve(source, tmp, reporthook=hook)
                if os.path.getsize(tmp) == 0:
                    raise OSError("the server sent an empty file")
            except Exception as e:
                raise DownloadError(
                    f"cannot download {source}{via}: {type(e).__name__}: {e}. Nothing was "
                    f"cached{moved}; on a machine without access, place the file by hand at "
                    f"{cached} (docs/checkpoints.md, 'Offline machines')"
                ) from e
            finally:
                if bar is not None:
                    bar.close()
            expected = expected_sha256_prefix(url)
            if not _matches(url, tmp):
                actual = file_sha256(tmp)[:len(expected)]
                raise ChecksumError(
                    f"{url}{via}: sha256 of the downloaded file starts with {actual}, its name "
                    f"promises {expected} (truncated, corrupt or substituted file); discarded "
                    f"it, nothing was cached at {cached}{moved}"
                )
            os.replace(tmp, cached)
        logger.info(f"Downloaded {cached} ({os.path.getsize(cached)} bytes)")
