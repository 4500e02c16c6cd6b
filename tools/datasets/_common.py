"""Shared by the dataset preparation tools: resumable, atomic conversion with a progress bar.

Each tool converts a list of items into files. Outputs are written atomically (a temporary file
renamed into place), so an interrupted run never leaves a half-written label; a re-run keeps
what exists and converts the rest. A completion marker records a finished run: running again
then does nothing, and only ``--force`` regenerates (and overwrites) the outputs.
"""
import argparse
import io
import json
import os
import sys
import time
from multiprocessing import Pool
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

# The tools read dataset downloads, not untrusted input, and aerial scenes (iSAID's, up to
# ~20000 px a side) exceed PIL's decompression-bomb limit.
Image.MAX_IMAGE_PIXELS = None

__all__ = ["add_common_args", "save_png", "write_lines", "convert_all", "fail", "SourceError",
           "read_image", "save_bytes"]


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="regenerate and overwrite outputs, even of a finished run")
    parser.add_argument("--nproc", type=int, default=1, help="worker processes")


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def need(module: str, user: str, extra: str = "datasets"):
    """Imports an optional package up front, or fails naming the pip extra that brings it."""
    from d2seg.utils.dependencies import require

    try:
        return require(module, extra, user)
    except ImportError as e:
        fail(str(e))


def _tmp_path(path: str) -> str:
    d, base = os.path.split(path)
    stem, ext = os.path.splitext(base)
    return os.path.join(d, f".{stem}.tmp{os.getpid()}{ext}")


def save_png(array: np.ndarray, path: str) -> None:
    """Writes a uint8 label map as a single-channel PNG, atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _tmp_path(path)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


def save_bytes(data: bytes, path: str) -> None:
    """Writes a file (e.g. an image copied out of an archive), atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class SourceError(Exception):
    """A downloaded file that is missing, truncated or corrupt: convert_all stops with an
    ``error:`` line naming it (and saying to download it again) instead of a traceback."""


def read_image(source, where: str, mode: Optional[str] = None) -> np.ndarray:
    """Decodes an image (a path or its bytes) fully, optionally converted to ``mode``."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            return np.asarray(img.convert(mode) if mode else img)
    except (OSError, SyntaxError, ValueError) as e:  # PIL's truncated / unidentified image
        raise SourceError(f"{where}: cannot decode the image ({e}); truncated or corrupt: "
                          "download it again") from e


def write_lines(path: str, lines: Iterable[str]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "w") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)


def convert_all(items: Sequence, output_of: Callable[[object], str], convert: Callable[[object], None],
                marker: str, spec: dict, force: bool, desc: str, nproc: int = 1) -> List:
    """Runs ``convert(item)`` (which writes ``output_of(item)``) for the items that need it.

    Returns the items converted. A finished run (``marker`` holds ``spec``) is left alone
    unless ``force``; without ``force`` existing outputs are kept (and said so).
    """
    if os.path.isfile(marker) and not force:
        with open(marker) as f:
            done = json.load(f)
        if any(done.get(k) != v for k, v in json.loads(json.dumps(spec)).items()):
            fail(f"{desc}: {marker} records a finished run with other settings "
                 f"({ {k: done.get(k) for k in spec} }, now {spec}): prepare into an empty folder, or "
                 "--force to regenerate over it")
        print(f"{desc}: already prepared ({done.get('count', '?')} files, marker {marker}); "
              "nothing to do. Use --force to regenerate them.")
        return []
    todo = list(items) if force else [i for i in items if not os.path.exists(output_of(i))]
    kept = len(items) - len(todo)
    if kept:
        print(f"{desc}: keeping {kept} existing output files (an interrupted run, or made "
              "elsewhere); use --force to regenerate them.")
    try:
        if nproc > 1 and len(todo) > 1:
            with Pool(nproc) as pool:
                for _ in tqdm(pool.imap_unordered(convert, todo, chunksize=16), total=len(todo),
                              desc=desc):
                    pass
        else:
            for item in tqdm(todo, desc=desc):
                convert(item)
    except SourceError as e:  # outputs written so far are complete files: a re-run resumes
        fail(str(e))
    os.makedirs(os.path.dirname(marker) or ".", exist_ok=True)
    with open(marker, "w") as f:
        json.dump(dict(spec, count=len(items), finished=time.strftime("%Y-%m-%d %H:%M:%S")), f)
    print(f"{desc}: wrote {len(todo)} files ({kept} kept); done.")
    return todo
