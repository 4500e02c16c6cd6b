"""Image and label decoding as MMSegmentation's ``LoadImageFromFile`` and ``LoadAnnotations``.

Images: ``mmcv.imfrombytes`` with its default backend, cv2 (flag 'color': 3-channel 8-bit, EXIF
orientation applied), BGR -> RGB. Labels: Pillow, flag 'unchanged' (:func:`read_label`, the one
label reader of training, evaluation and the tools).

JPEG decoders differ: Pillow and OpenCV link different libjpeg builds (and upsample chroma
differently), so Detectron2's ``read_image`` (Pillow) gives pixels up to a few levels away from
mmseg's on ADE20K and VOC JPEGs. Decoding with cv2 gives mmseg's bytes exactly.
"""
import cv2
import numpy as np
from PIL import Image

from detectron2.utils.file_io import PathManager

__all__ = ["decode_image", "read_image", "read_label", "reduce_zero_label", "BadSampleError",
           "ColourLabelError"]

_EOI, _SOS = b"\xff\xd9", b"\xff\xda"


def decode_image(data: bytes, format: str = "RGB", name: str = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> H x W x 3 uint8 in ``format`` ("RGB" or "BGR"), as
    ``mmcv.imfrombytes(data, 'color', channel_order)``. Raises ValueError naming ``name`` for
    bytes cv2 cannot decode and for a JPEG cut short (cv2 would pad it with grey)."""
    if format not in ("RGB", "BGR"):
        raise ValueError(f"image format {format!r} is not supported: use 'RGB' or 'BGR' "
                         f"(INPUT.FORMAT), as mmseg's 'color' decoding ({name})")
    # a JPEG's entropy-coded data cannot contain 0xFFD9 (0xFF is stuffed): no end-of-image
    # marker after the last start-of-scan means the file was cut short
    if data[:2] == b"\xff\xd8" and data.rfind(_EOI) < data.rfind(_SOS):
        raise ValueError(f"image {name} is a truncated JPEG ({len(data)} bytes, no end marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise ValueError(f"cannot decode image {name} ({len(data)} bytes): not an image "
                         "format OpenCV reads, or a damaged file")
    if format == "RGB":
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)  # in place, as mmcv
    return img


def read_image(file_name: str, format: str = "RGB") -> np.ndarray:
    """Reads ``file_name`` (any iopath path) and decodes it as mmseg does (:func:`decode_image`)."""
    with PathManager.open(file_name, "rb") as f:
        data = f.read()
    return decode_image(data, format, file_name)


class BadSampleError(ValueError):
    """An image or label file that cannot be used (unreadable, wrong size, bad values)."""


class ColourLabelError(BadSampleError):
    """A label file with colour channels; ``grey``: its channels are all equal."""

    def __init__(self, msg: str, grey: bool):
        super().__init__(msg)
        self.grey = grey


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's ``reduce_zero_label`` on uint8 ids: 0 (often 'other') -> 255, k -> k-1, 255 stays
    255 (mmseg's order of operations; 255 is its ignore value whatever ``ignore_index`` says)."""
    label = label.astype(np.uint8)  # a copy
    label[label == 0] = 255
    label -= 1
    label[label == 254] = 255
    return label


def read_label(file_name: str, reduce_zero_label: bool = False) -> np.ndarray:
    """Reads a label map (any iopath path) as H x W uint8 class ids, as mmseg's LoadAnnotations
    (``mmcv.imfrombytes(flag='unchanged', backend='pillow')``, squeezed, uint8).

    Single-channel files only: "L" (grey values = ids), "P" (palette *indices* = ids, as Pascal
    VOC), "1" (0/1), 16/32-bit grey ("I;16", "I", ...) whose values fit in 0..255. Colour files
    raise :class:`ColourLabelError` (usually a colour visualisation, not ids); values that do not
    fit uint8 raise :class:`BadSampleError` naming the file and the values (mmseg would wrap them
    silently). ``reduce_zero_label``: :func:`reduce_zero_label` applied.
    """
    try:
        with PathManager.open(file_name, "rb") as f:
            img = Image.open(f)
            img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise BadSampleError(f"cannot read label {file_name}: {type(e).__name__}: {e}") from e
    if img.mode in ("L", "P", "1"):
        label = np.asarray(img, dtype=np.uint8)  # mode "1" is bool: 0/1
    elif img.mode.startswith("I"):  # I, I;16, I;16B, I;16L...
        label = np.asarray(img)
        if label.size and (label.min() < 0 or label.max() > 255):
            bad = np.unique(label[(label < 0) | (label > 255)])
            raise BadSampleError(
                f"label {file_name} ({img.mode}) has values outside 0..255 ("
                + ", ".join(str(v) for v in bad[:5]) + (", ..." if len(bad) > 5 else "")
                + "): class ids must fit in uint8")
        label = label.astype(np.uint8)
    else:
        bands = img.getbands()
        if len(bands) > 1:  # RGB, RGBA, LA...: compare the channels other than alpha / padding
            arr = np.asarray(img)[..., [i for i, b in enumerate(bands) if b not in "AaX"]]
            grey = bool((arr == arr[..., :1]).all())
            hint = (" Its channels are equal: save it as a single-channel ('L') PNG." if grey else
                    " It looks like a colour mask (a visualisation): convert each colour to its"
                    " class id (one uint8 id per pixel, an 'L' PNG).")
            raise ColourLabelError(
                f"label {file_name} is a {len(bands)}-channel {img.mode!r} image; expected a "
                f"single-channel label map of class ids ('L' or 'P' PNG).{hint}", grey)
        raise BadSampleError(f"label {file_name} has mode {img.mode!r}; expected a "
                             "single-channel label map of uint8 class ids ('L' or 'P' PNG)")
    return _reduce_zero_label(label) if reduce_zero_label else label


_reduce_zero_label = reduce_zero_label  # (read_label has an argument of that name)
