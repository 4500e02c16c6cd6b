"""d2seg.data.image_io decodes images byte-for-byte as MMSegmentation 0.30 (mmcv's cv2 backend),
on real files written by Pillow and OpenCV; labels are read as mmseg's LoadAnnotations does."""
import numpy as np
import pytest
from PIL import Image

import cv2

from d2seg.data.image_io import decode_image, read_image
from d2seg.data.mappers import SemSegDatasetMapper
from d2seg.data.mappers.semseg_mapper import BadSampleError, read_label

mmseg_peer = pytest.importorskip("mmseg_peer")
mmcv = pytest.importorskip("mmcv")


def _photo(h=61, w=83, seed=0):
    """A photo-like RGB image: smooth colour gradients, sharp edges and noise (odd size, so
    chroma subsampling has partial blocks)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 255, y / h * 255, (x + y) / (h + w) * 255], -1)
    img[h // 3: h // 2, w // 4: w // 2] = (250, 20, 30)  # a red square with sharp edges
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pil_jpeg(path, quality, subsampling, **kw):
    Image.fromarray(_photo()).save(path, "JPEG", quality=quality, subsampling=subsampling, **kw)


def _cv2_jpeg(path, quality, sampling):
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if sampling is not None:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    assert cv2.imwrite(str(path), cv2.cvtColor(_photo(), cv2.COLOR_RGB2BGR), params)


def _mmseg_load(path):
    """mmseg's LoadImageFromFile (color, cv2 backend, BGR) and Normalize's BGR -> RGB swap."""
    mmseg_peer.stub_mmcv_ext()
    from mmseg.datasets.pipelines import LoadImageFromFile

    out = LoadImageFromFile()(dict(img_info=dict(filename=str(path)), img_prefix=None))
    return out["img"]


JPEG_WRITERS = (
    [("pil", q, s) for q in (30, 75, 95) for s in (0, 1, 2)]  # 4:4:4, 4:2:2, 4:2:0
    + [("cv2", q, s) for q in (50, 90) for s in (
        None, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411)]
)


@pytest.mark.parametrize("writer,quality,sampling", JPEG_WRITERS)
def test_jpeg_matches_mmcv(tmp_path, writer, quality, sampling):
    path = tmp_path / "img.jpg"
    (_pil_jpeg if writer == "pil" else _cv2_jpeg)(path, quality, sampling)
    data = path.read_bytes()
    rgb = read_image(str(path), "RGB")
    assert rgb.dtype == np.uint8 and rgb.shape == (61, 83, 3)
    np.testing.assert_array_equal(rgb, mmcv.imread(str(path), "color", channel_order="rgb"))
    np.testing.assert_array_equal(rgb, mmcv.imfrombytes(data, "color", channel_order="rgb"))
    bgr = read_image(str(path), "BGR")
    np.testing.assert_array_equal(bgr, _mmseg_load(path))
    np.testing.assert_array_equal(bgr, rgb[..., ::-1])
    # it is a real lossy file: the decoded pixels are not the ones written
    assert (rgb.astype(int) - _photo()).any()


@pytest.mark.parametrize("kind", ["progressive", "grey", "exif_rotated", "png", "png_rgba",
                                  "png_16bit", "bmp"])
def test_other_files_match_mmcv(tmp_path, kind):
    photo = Image.fromarray(_photo())
    path = tmp_path / ("img.png" if kind.startswith("png") else "img.bmp" if kind == "bmp"
                       else "img.jpg")
    if kind == "progressive":
        _pil_jpeg(path, 80, 2, progressive=True)
    elif kind == "grey":
        photo.convert("L").save(path, quality=85)
    elif kind == "exif_rotated":  # orientation 6: cv2's 'color' flag rotates it, as mmcv
        exif = Image.Exif()
        exif[0x0112] = 6
        photo.save(path, quality=85, exif=exif)
    elif kind == "png_rgba":
        photo.putalpha(128)
        photo.save(path)
    elif kind == "png_16bit":
        cv2.imwrite(str(path), (_photo().astype(np.uint16) * 257)[..., ::-1])
    else:
        photo.save(path)
    got = read_image(str(path), "RGB")
    assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3
    np.testing.assert_array_equal(got, mmcv.imread(str(path), "color", channel_order="rgb"))
    if kind == "exif_rotated":
        assert got.shape[:2] == (83, 61)


def test_mapper_reads_images_as_mmseg(tmp_path):
    from common import get_d2seg_cfg

    path = tmp_path / "img.jpg"
    _pil_jpeg(path, 75, 2)
    mapper = SemSegDatasetMapper(get_d2seg_cfg(opts=["INPUT.FORMAT", "RGB"]), is_train=False,
                                 augmentations=[])
    out = mapper({"file_name": str(path), "height": 61, "width": 83})
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(),
                                  _mmseg_load(path)[..., ::-1])


@pytest.mark.parametrize("damage", ["truncated", "text", "empty"])
def test_bad_files_name_the_file(tmp_path, damage):
    path = tmp_path / "img.jpg"
    _pil_jpeg(path, 90, 0)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) * 2 // 3], "text": b"not an image",
                      "empty": b""}[damage])
    with pytest.raises(ValueError, match="img.jpg"):
        read_image(str(path))
    mapper = SemSegDatasetMapper(
        is_train=False, augmentations=[], image_format="RGB", num_classes=3)
    with pytest.raises(BadSampleError, match="img.jpg"):
        mapper({"file_name": str(path)})
    with pytest.raises(ValueError, match="format 'L'"):
        decode_image(data, "L")


@pytest.mark.parametrize("mode", ["P", "L"])
def test_labels_match_mmseg_load_annotations(tmp_path, mode):
    """Labels: mmseg's LoadAnnotations reads with Pillow, flag 'unchanged' (palette PNGs give
    their indices, not colours)."""
    mmseg_peer.stub_mmcv_ext()
    from mmseg.datasets.pipelines import LoadAnnotations

    rng = np.random.default_rng(1)
    ids = rng.integers(0, 21, (37, 45)).astype(np.uint8)
    ids[:5] = 255
    img = Image.fromarray(ids, "L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette(list(rng.integers(0, 256, 768).astype(np.uint8)))
        img.putdata(ids.ravel().tolist())
    path = tmp_path / "label.png"
    img.save(path)
    assert Image.open(path).mode == mode
    for reduce_zero_label in (False, True):
        ref = LoadAnnotations(reduce_zero_label=reduce_zero_label)(
            dict(ann_info=dict(seg_map=str(path)), seg_prefix=None, seg_fields=[]))
        np.testing.assert_array_equal(read_label(str(path), reduce_zero_label),
                                      ref["gt_semantic_seg"])
    np.testing.assert_array_equal(read_label(str(path)), ids)
