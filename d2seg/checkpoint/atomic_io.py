"""Files that other processes (ranks, jobs on other machines, a later run) may read while they
are written: checkpoints, ``last_checkpoint``, downloads and converted checkpoints.

- A file is written to a temporary name in its folder, flushed to disk and renamed into place
  (atomic on POSIX): readers see the old or the new file, never a truncated one.
- It is created with plain ``open``, so it gets the mode the umask gives (``0o666 & ~umask``),
  like any other file the user's programs write (``tempfile.mkstemp`` would give 0600).
- A temporary name says who writes it: ``.<name>.<machine>-<pid>-<random>.tmp``, where
  ``<machine>`` hashes host name, boot and pid namespace (a pid only means something there).
  Before each write into a folder, that folder's stale temporary files are removed: those of a
  process of this machine that no longer exists (a killed run), and those of another machine
  (or of an older d2seg's ``.tmp_*`` names) not modified for :data:`STALE_AFTER_S` before this
  process started (live writers keep touching theirs). A temporary file of a live process of
  this machine is never touched, nor any file whose name d2seg did not make.
- A path that a non-local iopath handler serves (e.g. ``s3://``) is written through
  ``path_manager.open``: that handler's store decides what is atomic.
"""
import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import time
from typing import IO, Iterator, List, Optional

import torch
from iopath.common.file_io import PathManager as PathManagerBase

__all__ = [
    "STALE_AFTER_S", "temp_path_for", "temp_file_for", "clean_stale_temp_files",
    "atomic_open", "atomic_torch_save", "atomic_write_text", "remove_if_exists",
]

logger = logging.getLogger(__name__)
# a temporary file of another machine (or of unknown origin) older than this, and older than the
# start of this process, belongs to a writer that is gone (live writers keep touching theirs)
STALE_AFTER_S = 3600.0
_RUN_START = time.time()
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<machine>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
# tempfile.mkstemp(prefix=".tmp_") names of earlier d2seg versions (no owner: cleaned by age)
_OLD_TEMP_NAME = re.compile(r"^\.tmp_[a-z0-9_]{8}.")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _machine_id() -> str:
    """Where a pid names one process: host name, boot and pid namespace (containers)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    key = "\0".join((socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), pid_ns))
    return hashlib.sha1(key.encode()).hexdigest()[:8]


_MACHINE = _machine_id()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_if_exists(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def temp_path_for(path: str, pid: Optional[int] = None) -> str:
    """A temporary name in ``path``'s folder that says which process writes it."""
    folder, name = os.path.split(os.path.abspath(path))
    pid = os.getpid() if pid is None else pid
    # keep the name within the 255 bytes file systems allow
    return os.path.join(folder, f".{name[:200]}.{_MACHINE}-{pid}-{secrets.token_hex(4)}.tmp")


def _is_stale(name: str, mtime: float, now: float) -> bool:
    m = _TEMP_NAME.match(name)
    if m is not None and m["machine"] == _MACHINE:  # a pid of this machine: ask the kernel
        return not _pid_alive(int(m["pid"]))
    if m is None and not _OLD_TEMP_NAME.match(name):
        return False  # not a name d2seg makes: never touched
    return mtime < _RUN_START and now - mtime > STALE_AFTER_S


def clean_stale_temp_files(folder: str) -> List[str]:
    """Removes the stale temporary files of ``folder`` (see the module docstring); returns them."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and _is_stale(
                    entry.name, entry.stat(follow_symlinks=False).st_mtime, now):
                os.remove(entry.path)
                removed.append(entry.path)
        except OSError as e:  # gone meanwhile, or another user's file in a shared folder
            logger.debug(f"cannot remove the stale temporary file {entry.path}: {e}")
    if removed:
        logger.info(f"removed {len(removed)} stale temporary file(s) of killed writers: "
                    + ", ".join(removed))
    return removed


@contextlib.contextmanager
def temp_file_for(path: str) -> Iterator[str]:
    """A temporary name next to ``path`` (after cleaning the folder's stale ones), removed on
    exit unless it was renamed into place."""
    clean_stale_temp_files(os.path.dirname(os.path.abspath(path)))
    tmp = temp_path_for(path)
    try:
        yield tmp
    finally:
        remove_if_exists(tmp)


def _fsync_dir(folder: str) -> None:
    """Makes the rename itself durable (a power loss must not bring back the old name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


def _is_local(path: str, path_manager: Optional[PathManagerBase]) -> bool:
    # iopath serves every path no registered prefix claims with its NativePathHandler
    handlers = getattr(path_manager, "_path_handlers", {}) if path_manager is not None else {}
    return not any(os.fspath(path).startswith(prefix) for prefix in handlers)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb",
                path_manager: Optional[PathManagerBase] = None) -> Iterator[IO]:
    """``open(path, mode)`` ("w" or "wb") whose content appears at ``path`` only once complete."""
    assert mode in ("w", "wb"), mode
    if not _is_local(path, path_manager):
        with path_manager.open(path, mode) as f:
            yield f
        return
    with temp_file_for(path) as tmp:
        with open(tmp, mode.replace("w", "x")) as f:  # "x": never follows another's file
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_torch_save(obj, path: str, path_manager: Optional[PathManagerBase] = None) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_open`."""
    with atomic_open(path, "wb", path_manager) as f:
        torch.save(obj, f)


def atomic_write_text(text: str, path: str,
                      path_manager: Optional[PathManagerBase] = None) -> None:
    with atomic_open(path, "w", path_manager) as f:
        f.write(text)
