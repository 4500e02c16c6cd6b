"""Weights by name and verified downloads (d2seg/checkpoint/catalog.py, download.py, handlers.py),
against a local HTTP server standing in for download.openmmlab.com through D2SEG_MIRROR."""
import hashlib
import json
import multiprocessing
import os
import shutil

import pytest
import yaml

from detectron2.utils.file_io import PathManager

from http_server import cache, refused_url, server  # noqa: F401  (fixtures)
from d2seg.checkpoint import ChecksumError, DownloadError, resolve_name
from d2seg.checkpoint.catalog import apply_mirror, checkpoint_table
from d2seg.checkpoint.download import cache_path_for
from d2seg.checkpoint.handlers import register_handlers

OPENMMLAB = "https://download.openmmlab.com"


def cache_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def hashed(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


def publish(server, path, data):
    """Serves ``data`` at ``path`` of the mirror; returns the canonical openmmlab URL."""
    server.add(path, data)
    return OPENMMLAB + path


def test_names_resolve_to_the_urls_of_mmsegs_metafiles_and_mmcvs_table():
    """The table holds every config of the 13 methods MMSegmentation 0.30 ships, with the
    checkpoint its metafile lists (None where it lists none)."""
    import glob

    import mmcv
    import mmseg

    from build_checkpoint_table import METHODS

    root = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs")
    configs = checkpoint_table()["configs"]
    expected = {}
    for method in METHODS:
        for path in glob.glob(os.path.join(root, method, "*.py")):
            expected[f"{method}/{os.path.basename(path)[:-3]}"] = None
        with open(os.path.join(root, method, f"{method}.yml")) as f:
            for m in yaml.safe_load(f)["Models"]:
                expected[f"{method}/{os.path.basename(m['Config'])[:-3]}"] = m.get("Weights")
    # the 13 classic methods + the real-time families + the transformer families (issue 21)
    assert len(expected) == 390 + 47 + 81
    assert {k: e["weights"] for k, e in configs.items()} == expected
    for key, url in expected.items():
        if url:
            assert resolve_name(f"mmseg://{key}") == url
    with open(os.path.join(os.path.dirname(mmcv.__file__), "model_zoo", "open_mmlab.json")) as f:
        mmcv_urls = json.load(f)
    for name in ("resnet50_v1c", "resnet101_v1c", "msra/hrnetv2_w18_small", "msra/hrnetv2_w18",
                 "msra/hrnetv2_w48"):
        assert resolve_name(f"open-mmlab://{name}") == mmcv_urls[name]


def test_names_resolve_to_their_cache_paths(cache, server, monkeypatch):
    data = os.urandom(2000)
    stem = "fcn_r50-d8_512x1024_40k_cityscapes"
    path = f"/mmsegmentation/v0.5/fcn/{stem}/{stem}_20200101_000000-{hashed(data)}.pth"
    monkeypatch.setitem(checkpoint_table()["configs"], f"fcn/{stem}",
                        {"weights": publish(server, path, data), "pretrained": None})
    inet = f"/pretrain/third_party/resnet50_v1c-{hashed(data[::-1])}.pth"
    monkeypatch.setitem(checkpoint_table()["imagenet"], "open-mmlab://resnet50_v1c",
                        publish(server, inet, data[::-1]))

    local = PathManager.get_local_path(f"mmseg://fcn/{stem}")
    # the canonical path, not the mirror's: a cache filled through a mirror serves everyone
    assert local == os.path.join(cache, path.lstrip("/"))
    assert open(local, "rb").read() == data
    local = PathManager.get_local_path("open-mmlab://resnet50_v1c")
    assert local == os.path.join(cache, inet.lstrip("/"))
    assert open(local, "rb").read() == data[::-1]
    with PathManager.open("open-mmlab://resnet50_v1c", "rb") as f:
        assert f.read() == data[::-1]
    with pytest.raises(KeyError, match="did you mean fcn/fcn_r50-d8_512x1024_40k_cityscapes"):
        resolve_name("mmseg://fcn/fcn_r50-d8_512x1024_40k_cityscape")
    with pytest.raises(KeyError, match="released no checkpoint"):
        resolve_name("mmseg://fcn/fcn_r50-d8_480x480_40k_pascal_context")
    with pytest.raises(KeyError, match="open-mmlab://resnet50_v1c"):
        resolve_name("open-mmlab://resnet51_v1c")


def test_mirror_replaces_only_the_openmmlab_host(monkeypatch):
    monkeypatch.setenv("D2SEG_MIRROR", "http://mirror.local/mm/")
    assert apply_mirror(OPENMMLAB + "/pretrain/a-12345678.pth") == \
        "http://mirror.local/mm/pretrain/a-12345678.pth"
    other = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert apply_mirror(other) == other
    monkeypatch.delenv("D2SEG_MIRROR")
    assert apply_mirror(OPENMMLAB + "/x.pth") == OPENMMLAB + "/x.pth"


def test_verified_download_is_cached_and_reused_offline(cache, server, monkeypatch):
    data = os.urandom(5000)
    url = publish(server, f"/pretrain/third_party/w-{hashed(data)}.pth", data)
    local = PathManager.get_local_path(url)
    assert open(local, "rb").read() == data
    assert server.requests[f"/pretrain/third_party/w-{hashed(data)}.pth"] == 1
    # a new process (fresh handlers) and no network: the cache alone serves it, verified
    register_handlers()
    monkeypatch.setenv("D2SEG_MIRROR", refused_url(""))
    assert PathManager.get_local_path(url) == local
    # the cache copied to another machine's $FVCORE_CACHE is enough
    other = os.path.join(os.path.dirname(cache), "other_cache")
    shutil.copytree(cache, other)
    monkeypatch.setenv("FVCORE_CACHE", other)
    register_handlers()
    assert PathManager.get_local_path(url) == os.path.join(other, os.path.relpath(local, cache))
    assert server.requests[f"/pretrain/third_party/w-{hashed(data)}.pth"] == 1


def test_wrong_download_is_discarded_and_names_url_and_both_prefixes(cache, server):
    data = os.urandom(3000)
    wrong = "0123abcd" if hashed(data) != "0123abcd" else "0123abce"
    url = publish(server, f"/mmsegmentation/v0.5/x/x-{wrong}.pth", data)
    with pytest.raises(ChecksumError) as e:
        PathManager.get_local_path(url)
    msg = str(e.value)
    assert url in msg and wrong in msg and hashed(data) in msg
    # only the lock file stays (removing it could let two processes download at once)
    assert cache_files(cache) == [f"mmsegmentation/v0.5/x/x-{wrong}.pth.lock"]


def test_wrong_file_placed_in_the_cache_by_hand_is_moved_aside_never_deleted(cache, server):
    data = os.urandom(3000)
    path = f"/pretrain/third_party/h-{hashed(data)}.pth"
    url = publish(server, path, data)
    target = cache_path_for(url)
    os.makedirs(os.path.dirname(target))
    with open(target, "wb") as f:
        f.write(data[:-1])  # one byte short
    assert PathManager.get_local_path(url) == target
    assert open(target, "rb").read() == data and server.requests[path] == 1
    aside = [f for f in cache_files(cache) if ".mismatch-" in f]
    assert len(aside) == 1 and open(os.path.join(cache, aside[0]), "rb").read() == data[:-1]

    # the same with no way to download: the error says where the user's file went
    with open(target, "wb") as f:
        f.write(data[1:])
    server.files.pop(path)
    with pytest.raises(DownloadError) as e:
        PathManager.get_local_path(url)
    aside = [f for f in cache_files(cache) if ".mismatch-" in f]
    assert len(aside) == 2 and not os.path.exists(target)
    moved = [os.path.join(cache, f) for f in aside
             if open(os.path.join(cache, f), "rb").read() == data[1:]]
    assert len(moved) == 1 and f"moved to {moved[0]}" in str(e.value)


@pytest.mark.parametrize("failure", ["truncated", "404", "refused"])
def test_failed_transfer_names_url_and_cache_path_and_leaves_nothing(
        failure, cache, server, monkeypatch):
    data = os.urandom(4000)
    path = f"/mmsegmentation/v0.5/y/y-{hashed(data)}.pth"
    if failure == "truncated":
        server.add(path, data, truncate=1000)
    if failure == "refused":
        monkeypatch.setenv("D2SEG_MIRROR", refused_url(""))
    url = OPENMMLAB + path
    with pytest.raises(DownloadError) as e:
        PathManager.get_local_path(url)
    msg = str(e.value)
    assert path in msg and cache_path_for(url) in msg
    assert {"truncated": "1000 out of 4000", "404": "404",
            "refused": "refused"}[failure] in msg
    assert cache_files(cache) == [path.lstrip("/") + ".lock"]


def _load_in_child(url, barrier, queue):
    barrier.wait()
    try:
        queue.put(("ok", PathManager.get_local_path(url)))
    except Exception as e:  # reported to the parent
        queue.put(("error", repr(e)))


def test_two_processes_loading_one_url_download_it_once(cache, server):
    data = os.urandom(20000)
    path = f"/mmsegmentation/v0.5/z/z-{hashed(data)}.pth"
    server.add(path, data, delay=1.0)  # both processes are inside get_local_path meanwhile
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(OPENMMLAB + path, barrier, queue))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    local = cache_path_for(OPENMMLAB + path)
    assert results == [("ok", local)] * 2
    assert server.requests[path] == 1
    assert open(local, "rb").read() == data


def test_download_weights_tool_fills_the_given_cache_and_fails_naming_what_failed(
        cache, server, tmp_path, monkeypatch, capsys):
    import download_weights

    data = os.urandom(3000)
    stem = "ann_r50-d8_512x1024_40k_cityscapes"
    path = f"/mmsegmentation/v0.5/ann/{stem}/{stem}_20200101_000000-{hashed(data)}.pth"
    monkeypatch.setitem(checkpoint_table()["configs"], f"ann/{stem}",
                        {"weights": publish(server, path, data), "pretrained": None})
    other = str(tmp_path / "offline_cache")
    assert download_weights.main([f"ann/{stem}", "--cache", other]) == 0
    assert cache_files(other) == [path.lstrip("/"), path.lstrip("/") + ".lock"]
    assert "sha256 verified" in capsys.readouterr().out

    missing = f"{OPENMMLAB}/pretrain/third_party/nothere-{hashed(b'x')}.pth"
    assert download_weights.main([missing, "mmseg://ann/no_such_config", "--cache", other]) == 1
    err = capsys.readouterr().err
    assert f"FAILED {missing}" in err and "FAILED mmseg://ann/no_such_config" in err
    # nothing cached for the failure but its (empty) lock file, which is never removed
    assert cache_files(other) == [path.lstrip("/"), path.lstrip("/") + ".lock",
                                  f"pretrain/third_party/nothere-{hashed(b'x')}.pth.lock"]
