"""Shared by the preparation tools that read the official zip archives directly (no temporary
extraction): members read and checked (CRC) one at a time, a clear error for a missing, truncated
or corrupt archive, and the unpack-and-check command line of the test sets."""
import argparse
import functools
import os
import zipfile
import zlib
from typing import List, Sequence

from PIL import Image

from _common import SourceError, add_common_args, convert_all, fail, save_bytes

__all__ = ["read_member", "zip_names", "member_size", "extract_member", "unpack_zip",
           "check_pairs", "unpack_tool"]


def _zip(path: str) -> zipfile.ZipFile:
    """One open handle per archive (as it is now) and process."""
    st = os.stat(path)
    return _open_zip(path, os.getpid(), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _open_zip(path: str, pid: int, mtime_ns: int, size: int) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def read_member(zip_path: str, member: str) -> bytes:
    """The bytes of ``member`` of the zip archive, checked against its CRC."""
    try:
        return _zip(zip_path).read(member)
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise SourceError(f"{zip_path}: cannot read {member!r} ({e}); the archive is truncated or "
                          "corrupt: download it again") from e


def zip_names(zip_path: str) -> List[str]:
    """The member names of a zip archive; fails clearly when it is missing or truncated."""
    if not os.path.isfile(zip_path):
        fail(f"{zip_path!r} does not exist")
    try:
        return _zip(zip_path).namelist()
    except (OSError, zipfile.BadZipFile) as e:
        fail(f"{zip_path}: not a readable zip archive ({e}); truncated? download it again")


def member_size(zip_path: str, member: str):
    """(height, width) of an image in a zip archive, from its header (decompresses only the
    start of the member)."""
    try:
        with _zip(zip_path).open(member) as f, Image.open(f) as img:
            return img.height, img.width
    except (OSError, SyntaxError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise SourceError(f"{zip_path}: {member!r} is not a readable image ({e}); the archive is "
                          "truncated or corrupt: download it again") from e


def unpack_zip(zip_path: str, out_dir: str, folders: Sequence[str], desc: str, force: bool = False,
               nproc: int = 1) -> None:
    """Extracts the files under ``folders`` (e.g. ``leftImg8bit/``) of an archive into
    ``out_dir``, dropping whatever folder the archive puts above them; each file atomically, a
    re-run resumes (a finished one is left alone unless ``force``)."""
    items = []
    for name in zip_names(zip_path):
        hits = [name.index(f) for f in folders if f in name and (name.index(f) == 0 or
                                                                 name[name.index(f) - 1] == "/")]
        if hits and not name.endswith("/"):
            rel = name[min(hits):]
            if ".." in rel.split("/"):
                fail(f"{zip_path}: member {name!r} points outside the output folder")
            items.append((zip_path, name, rel))
    if not items:
        fail(f"{zip_path}: no files under {list(folders)} inside; is it the right archive?")
    convert_all(items, lambda it: os.path.join(out_dir, it[2]),
                functools.partial(extract_member, out_dir=out_dir),
                marker=os.path.join(out_dir, ".d2seg_unpacked.json"),
                spec={"archive": os.path.basename(zip_path)}, force=force, desc=desc, nproc=nproc)


def extract_member(item, out_dir: str) -> None:
    """Copies ``item = (zip_path, member, relative output path)`` out of the archive, atomically."""
    zip_path, member, rel = item
    save_bytes(read_member(zip_path, member), os.path.join(out_dir, rel))


def check_pairs(image_root: str, gt_root: str, image_suffix: str, label_suffix: str) -> None:
    """Fails unless every image in ``image_root`` has its label in ``gt_root`` and vice versa
    (the pairing d2seg's registration makes)."""
    from d2seg.data.datasets.folder import load_sem_seg_folder

    try:
        n = len(load_sem_seg_folder(image_root, gt_root, image_suffix, label_suffix))
    except (OSError, ValueError) as e:
        fail(str(e))
    print(f"{n} images with labels in {image_root}")


def unpack_tool(argv, doc: str, archive: str, folders: Sequence[str], pairs: Sequence[str]) -> None:
    """The command line of a test set used as its archive unpacks (Dark Zurich, Nighttime
    Driving): ``ARCHIVE -o OUT``; unpacks ``folders`` and checks the ``pairs`` (image folder,
    label folder, image suffix, label suffix, relative to OUT)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("zip", help=archive)
    p.add_argument("-o", "--out-dir", required=True, help="the dataset's folder (see above)")
    add_common_args(p)
    args = p.parse_args(argv)
    unpack_zip(args.zip, args.out_dir, folders, os.path.splitext(archive)[0], args.force,
               args.nproc)
    image_dir, label_dir, image_suffix, label_suffix = pairs
    check_pairs(os.path.join(args.out_dir, image_dir), os.path.join(args.out_dir, label_dir),
                image_suffix, label_suffix)
