"""Checkpoint, download and conversion files as a shared cluster needs them (atomic_io.py,
download.py, converted_cache.py, SegCheckpointer.save): the umask's permissions, no temporary
files left by killed writers, a read-only cache served without writing, locks never removed
under their holder, files placed by hand never deleted, damaged cache entries rebuilt."""
import builtins
import errno
import fcntl
import hashlib
import io
import multiprocessing
import os
import signal
import stat
import subprocess
import time

import pytest
import torch
from torch import nn

from detectron2.utils.file_io import PathHandler, PathManager
from iopath.common.file_io import PathManager as PathManagerBase, file_lock

from http_server import cache, server  # noqa: F401  (fixtures)
from d2seg.checkpoint import (
    DownloadError, SegCheckpointer, atomic_io, convert_mmseg_checkpoint, converted_cache,
)
from d2seg.checkpoint.download import cache_path_for
from d2seg.checkpoint.handlers import register_handlers

OPENMMLAB = "https://download.openmmlab.com"


def mmseg_bytes(seed=0) -> bytes:
    """A small MMSegmentation-style checkpoint (mmcv key names), as published."""
    g = torch.Generator().manual_seed(seed)
    sd = {"backbone.conv1.weight": torch.randn(4, 3, 1, 1, generator=g),
          "decode_head.convs.0.conv.weight": torch.randn(4, 4, 1, 1, generator=g),
          "decode_head.convs.0.bn.weight": torch.randn(4, generator=g),
          "decode_head.conv_seg.weight": torch.randn(3, 4, 1, 1, generator=g)}
    buf = io.BytesIO()
    torch.save({"meta": {"mmseg_version": "0.30.0"}, "state_dict": sd}, buf)
    return buf.getvalue()


def tree(root):
    """Every file and folder under ``root`` with what a write changes."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), root)] = (
                st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


@pytest.fixture
def published(server):
    data = mmseg_bytes()
    path = f"/mmsegmentation/v0.5/fcn/x/x_20200101-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.add(path, data)
    return OPENMMLAB + path, path, data


@pytest.fixture
def conversions(monkeypatch):
    calls = []
    real = converted_cache.load_mmseg_checkpoint
    monkeypatch.setattr(converted_cache, "load_mmseg_checkpoint",
                        lambda src: calls.append(1) or real(src))
    return calls


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_the_mode_the_umask_gives(umask, tmp_path, cache, published):
    url = published[0]
    old = os.umask(umask)
    try:
        ckpt = SegCheckpointer(nn.Linear(2, 2), save_dir=str(tmp_path / "out"))
        ckpt.save("model_0000001")
        ckpt.save("model_0000002")  # replaces last_checkpoint
        local = PathManager.get_local_path(url)
        converted_cache.read_or_convert(local)
        convert_mmseg_checkpoint(local, str(tmp_path / "by_hand.pth"))
    finally:
        os.umask(old)
    files = [tmp_path / "out" / "model_0000001.pth", tmp_path / "out" / "model_0000002.pth",
             tmp_path / "out" / "last_checkpoint", local,
             converted_cache.converted_path(local), tmp_path / "by_hand.pth"]
    assert {str(f): mode(f) for f in files} == {str(f): 0o666 & ~umask for f in files}
    assert open(tmp_path / "out" / "last_checkpoint").read() == "model_0000002.pth"


class MemoryHandler(PathHandler):
    """A non-local store (as s3:// would be): a file appears when its writer is closed."""

    def __init__(self):
        super().__init__()
        self.files = {}

    def _get_supported_prefixes(self):
        return ["memtest://"]

    def _mkdirs(self, path, **kwargs):
        pass

    def _exists(self, path, **kwargs):
        return path in self.files

    def _open(self, path, mode="r", **kwargs):
        files = self.files

        class Upload(io.BytesIO if "b" in mode else io.StringIO):
            def close(self):
                if not self.closed:
                    files[path] = self.getvalue()
                super().close()

        assert "w" in mode, mode
        return Upload()


def test_save_to_a_path_of_a_non_local_handler_goes_through_the_path_manager(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    handler = MemoryHandler()
    pm = PathManagerBase()
    pm.register_handler(handler)
    model = nn.Linear(3, 2)
    ckpt = SegCheckpointer(model, save_dir="memtest://run")
    ckpt.path_manager = pm
    ckpt.save("model_final", iteration=7)
    assert sorted(handler.files) == ["memtest://run/last_checkpoint",
                                     "memtest://run/model_final.pth"]
    assert handler.files["memtest://run/last_checkpoint"] == "model_final.pth"
    saved = torch.load(io.BytesIO(handler.files["memtest://run/model_final.pth"]))
    assert saved["iteration"] == 7 and torch.equal(saved["model"]["weight"], model.weight)
    assert os.listdir(tmp_path) == []  # nothing written locally


def _killed_while_saving(path):
    def save_then_die(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    atomic_io.torch.save = save_then_die
    atomic_io.atomic_torch_save({"model": {}}, path)


def _finished_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _temp_files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".tmp") or f.startswith(".tmp_"))


def test_temp_files_of_killed_writers_are_removed_at_the_next_write_live_ones_kept(
        tmp_path, cache, published):
    out = tmp_path / "out"
    out.mkdir()
    child = multiprocessing.get_context("fork").Process(
        target=_killed_while_saving, args=(str(out / "model_0000009.pth"),))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    killed = _temp_files(out)
    assert len(killed) == 1 and killed[0].startswith(".model_0000009.pth.")
    assert f"-{child.pid}-" in killed[0] and not os.path.exists(out / "model_0000009.pth")

    hour_ago = time.time() - atomic_io.STALE_AFTER_S - 60
    live = subprocess.Popen(["sleep", "60"])
    try:
        keep = [os.path.basename(atomic_io.temp_path_for(str(out / "model_live.pth"), live.pid)),
                ".model_x.pth.deadbeef-12-0123abcd.tmp",  # another machine's, 10 minutes old
                "notes.tmp", ".tmp_notes"]  # names d2seg never makes: the user's
        gone = [os.path.basename(atomic_io.temp_path_for(str(out / "m.pth"), _finished_pid())),
                ".model_y.pth.deadbeef-12-0123abcd.tmp",  # another machine's, over an hour old
                ".tmp_k3j_x9q2model_0000004.pth"]  # an older d2seg's mkstemp name, over an hour
        for name in keep + gone:
            (out / name).write_bytes(b"partial")
        os.utime(out / keep[1], (time.time() - 600,) * 2)
        for name in gone[1:]:
            os.utime(out / name, (hour_ago,) * 2)

        SegCheckpointer(nn.Linear(2, 2), save_dir=str(out)).save("model_0000010")
        assert _temp_files(out) == sorted(keep)
        assert sorted(os.listdir(out)) == sorted(keep + ["last_checkpoint", "model_0000010.pth"])

        # the download cache: a killed download's files go at the next download into the folder
        url, path, data = published
        folder = os.path.dirname(cache_path_for(url))
        os.makedirs(folder)
        stale = [os.path.basename(atomic_io.temp_path_for(cache_path_for(url), _finished_pid())),
                 os.path.basename(cache_path_for(url)) + ".tmp"]  # iopath's download name
        live_dl = os.path.basename(atomic_io.temp_path_for(os.path.join(folder, "o.pth"),
                                                           live.pid))
        for name in stale + [live_dl]:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"partial")
        assert open(PathManager.get_local_path(url), "rb").read() == data
        assert _temp_files(folder) == [live_dl]
    finally:
        live.kill()
        live.wait()


def _guard_writes_under(root, monkeypatch):  # noqa: C901
    """Every attempt to create, change, rename or remove something under ``root`` is recorded
    and fails as on a read-only file system."""
    attempts = []
    root = os.path.realpath(root)

    def under(path):
        return isinstance(path, (str, bytes, os.PathLike)) and \
            os.path.realpath(os.fsdecode(path)).startswith(root)

    def refuse(what, path):
        attempts.append((what, os.fsdecode(path)))
        raise OSError(errno.EROFS, "read-only file system (test)", os.fsdecode(path))

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if under(file) and any(c in mode for c in "wax+"):
            refuse("open " + mode, file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if under(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
            refuse("os.open", path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    for name in ("replace", "rename", "remove", "unlink", "mkdir", "makedirs", "rmdir", "utime",
                 "chmod", "link", "symlink", "truncate"):
        real = getattr(os, name)

        def guarded(path, *args, _real=real, _name=name, **kwargs):
            if under(path) or (args and under(args[0])):
                refuse(_name, path)
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(os, name, guarded)
    return attempts


def test_read_only_cache_with_verified_files_is_served_without_any_write(
        cache, published, conversions, monkeypatch):
    url, path, data = published
    local = PathManager.get_local_path(url)
    expected, _ = converted_cache.read_or_convert(local)
    for f in list(tree(cache)):
        if f.endswith(".lock"):  # a copied cache need not have them
            os.remove(os.path.join(cache, f))
    before = tree(cache)
    assert len(conversions) == 1 and len(before) == 6  # 4 folders, download, conversion

    register_handlers()  # a new process
    monkeypatch.setenv("D2SEG_MIRROR", "http://127.0.0.1:9/nothing")
    with pytest.MonkeyPatch.context() as mp:
        attempts = _guard_writes_under(cache, mp)
        assert PathManager.get_local_path(url) == local
        converted, _ = converted_cache.read_or_convert(local)
    assert attempts == [] and tree(cache) == before and len(conversions) == 1
    assert converted["model"].keys() == expected["model"].keys()
    assert all(torch.equal(converted["model"][k], v) for k, v in expected["model"].items())


def test_read_only_cache_without_a_conversion_converts_in_memory(cache, published, conversions):
    url = published[0]
    local = PathManager.get_local_path(url)
    os.remove(local + ".lock")
    before = tree(cache)
    with pytest.MonkeyPatch.context() as mp:
        attempts = _guard_writes_under(cache, mp)
        converted, _ = converted_cache.read_or_convert(local)
    # only the lock was tried (and refused): no conversion is written, the load goes on
    assert [p for what, p in attempts if what == "open a"] == \
        [converted_cache.converted_path(local) + ".lock"]
    assert {what for what, _ in attempts} <= {"open a", "makedirs"}
    assert len(conversions) == 1 and tree(cache) == before
    assert "decode_head.conv_seg.weight" in converted["model"]


def _lock_is_held(lock_path):
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _resolve(url, queue):
    try:
        queue.put(("ok", PathManager.get_local_path(url)))
    except Exception as e:
        queue.put((type(e).__name__, str(e)))


def _die_holding_the_lock(path):
    with file_lock(path):
        os.kill(os.getpid(), signal.SIGKILL)


def test_download_lock_is_never_removed_under_its_holder_and_dies_with_it(cache, server):
    data = os.urandom(3000)
    path = f"/pretrain/third_party/slow-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server.add(path, data, delay=2.0, truncate=100)  # every try takes 2 s and fails
    url = OPENMMLAB + path
    lock = cache_path_for(url) + ".lock"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    first = ctx.Process(target=_resolve, args=(url, queue))
    first.start()
    deadline = time.time() + 20
    while not (os.path.exists(lock) and _lock_is_held(lock)):
        assert time.time() < deadline, "the first process never took the lock"
        time.sleep(0.05)
    second = ctx.Process(target=_resolve, args=(url, queue))  # waits for the first
    second.start()
    first.join(30)
    assert queue.get(timeout=5)[0] == "DownloadError"
    time.sleep(0.8)  # the second (polling every 0.25 s) now holds the lock for its 2 s try
    # the first one's failure left the lock file, the one the second process holds: a third
    # process would wait, not download alongside
    assert os.path.exists(lock) and _lock_is_held(lock)
    second.join(30)
    assert queue.get(timeout=5)[0] == "DownloadError"
    assert server.requests[path] == 2

    # a holder that is killed releases the lock (an OS lock): the next process does not wait
    server.add(path, data)
    dying = ctx.Process(target=_die_holding_the_lock, args=(cache_path_for(url),))
    dying.start()
    dying.join(30)
    assert dying.exitcode == -signal.SIGKILL and os.path.exists(lock)
    start = time.time()
    assert open(PathManager.get_local_path(url), "rb").read() == data
    assert time.time() - start < 5


def test_damaged_download_and_conversion_are_rebuilt_also_after_this_process_used_them(
        cache, published, conversions, server):
    url, path, data = published
    local = PathManager.get_local_path(url)
    first, _ = converted_cache.read_or_convert(local)
    dst = converted_cache.converted_path(local)

    # the conversion truncated (a full disk, a copy by hand): converted and written again
    blob = open(dst, "rb").read()
    with open(dst, "wb") as f:
        f.write(blob[:len(blob) // 2])
    again, _ = converted_cache.read_or_convert(local)
    assert len(conversions) == 2 and open(dst, "rb").read() != blob[:len(blob) // 2]
    assert all(torch.equal(again["model"][k], v) for k, v in first["model"].items())
    assert torch.load(dst, weights_only=False)["model"].keys() == first["model"].keys()

    # the download damaged in place, keeping its size and times: this process resolved it before
    # (cache_map, hash memo), yet it is checked again, moved aside and downloaded again
    st = os.stat(local)
    with open(local, "r+b") as f:
        f.seek(100)
        f.write(bytes(b ^ 0xFF for b in data[100:164]))
    os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(local).st_size == st.st_size
    assert PathManager.get_local_path(url) == local
    assert open(local, "rb").read() == data and server.requests[path] == 2
    aside = [f for f in os.listdir(os.path.dirname(local)) if ".mismatch-" in f]
    assert len(aside) == 1
    # the sound download has the same hash: its conversion is reused
    third, _ = converted_cache.read_or_convert(local)
    assert len(conversions) == 2 and third["model"].keys() == first["model"].keys()

    # truncated: the same, and a download that cannot happen says where the damaged file went
    with open(local, "r+b") as f:
        f.truncate(1000)
    server.files.pop(path)
    with pytest.raises(DownloadError, match="moved to .*mismatch-"):
        PathManager.get_local_path(url)
