#!/usr/bin/env python
"""Downloads and verifies weights into d2seg's cache (on a connected machine, for an offline one).

    python tools/download_weights.py mmseg://pspnet/pspnet_r50-d8_512x1024_40k_cityscapes
    python tools/download_weights.py pspnet/pspnet_r50-d8_512x1024_40k_cityscapes \
        open-mmlab://resnet50_v1c
    python tools/download_weights.py --all-imagenet --cache /shared/d2seg_cache

Each argument is an ``mmseg://<method>/<config stem>``, ``open-mmlab://``/``torchvision://`` name,
an ``http(s)://`` URL, or a zoo config name (``<method>/<config stem>``, read as ``mmseg://``).
``--all-imagenet`` adds every ImageNet checkpoint a zoo config starts from. Files go to
``--cache`` (default ``$FVCORE_CACHE``, else ``~/.torch/iopath_cache``) under the URL's path;
copy that folder to the other machine and point ``FVCORE_CACHE`` at it (docs/checkpoints.md).
``D2SEG_MIRROR`` is honoured. Exit status 1 if any download or checksum fails.
"""
import argparse
import logging
import sys

from detectron2.utils.file_io import PathManager
from iopath.common.file_io import get_cache_dir

from d2seg.checkpoint.catalog import (
    IMAGENET_PREFIXES, MMSEG_PREFIX, checkpoint_table, resolve_name,
)
from d2seg.checkpoint.download import expected_sha256_prefix, file_sha256


def all_imagenet():
    table = checkpoint_table()
    names = set(table["imagenet"])
    names.update(e["pretrained"] for e in table["configs"].values()
                 if e["pretrained"] and e["pretrained"].startswith("http"))
    return sorted(names)


def as_name(arg: str) -> str:
    if "://" in arg:
        return arg
    return MMSEG_PREFIX + (arg[:-len(".yaml")] if arg.endswith(".yaml") else arg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME_OR_URL")
    parser.add_argument("--all-imagenet", action="store_true",
                        help="every ImageNet checkpoint the zoo configs start from")
    parser.add_argument("--cache", help="cache folder (default: $FVCORE_CACHE)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = [as_name(n) for n in args.names] + (all_imagenet() if args.all_imagenet else [])
    if not names:
        parser.error("nothing to download: give names/URLs or --all-imagenet")
    print(f"cache: {get_cache_dir(args.cache)}")
    failed = []
    for name in names:
        try:
            path = PathManager.get_local_path(name, cache_dir=args.cache)
        except (OSError, KeyError, ValueError) as e:  # DownloadError, ChecksumError, unknown name
            msg = e.args[0] if isinstance(e, KeyError) else str(e)
            print(f"FAILED {name}: {msg}", file=sys.stderr)
            failed.append(name)
            continue
        url = resolve_name(name) if name.startswith((MMSEG_PREFIX,) + IMAGENET_PREFIXES) else name
        check = "sha256 verified" if url and expected_sha256_prefix(url) else "no hash in the name"
        print(f"ok {name}\n   {path} ({check}: {file_sha256(path)[:16]}...)")
    if failed:
        print(f"{len(failed)} of {len(names)} failed: {' '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
