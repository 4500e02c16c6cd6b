"""Image decoding as MMSegmentation's ``LoadImageFromFile``: ``mmcv.imfrombytes`` with its
default backend, cv2 (flag 'color': 3-channel 8-bit, EXIF orientation applied), BGR -> RGB.

JPEG decoders differ: Pillow and OpenCV link different libjpeg builds (and upsample chroma
differently), so Detectron2's ``read_image`` (Pillow) gives pixels up to a few levels away from
mmseg's on ADE20K and VOC JPEGs. Decoding with cv2 gives mmseg's bytes exactly.
"""
import cv2
import numpy as np

from detectron2.utils.file_io import PathManager

__all__ = ["decode_image", "read_image"]

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
