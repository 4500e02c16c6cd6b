"""SemSegDatasetMapper: alignment invariants, output format, label checks and bad inputs."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data.common import MapDataset

from d2seg.data.mappers import BadSampleError, SemSegDatasetMapper, read_label

import common

NUM_CLASSES = 5
# image colour of each label value: far apart, so an image pixel tells its label
PALETTE = {0: (20, 20, 20), 1: (230, 30, 30), 2: (30, 230, 30), 3: (30, 30, 230),
           4: (230, 230, 30), 255: (200, 200, 200)}


def cfg_for(opts=()):
    return common.get_d2seg_cfg(common.REPO_CONFIGS / "_base_/Base-Segmentation.yaml", [
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", NUM_CLASSES, "INPUT.IMG_SCALE", [96, 64],
        "INPUT.CROP.SIZE", [40, 48], "INPUT.TEST_IMG_SCALE", [96, 64], *opts,
    ])


def blocky_label(h, w, seed=0, block=8):
    rng = np.random.default_rng(seed)
    vals = np.array(list(PALETTE))
    label = vals[rng.integers(0, len(vals), (h // block + 1, w // block + 1))]
    return label.repeat(block, 0).repeat(block, 1)[:h, :w].astype(np.uint8)


def write_sample(tmp_path, label, name="a", image=None, label_mode=None):
    """Writes <name>.png (image encoding the label) and <name>_gt.png; returns the dataset dict."""
    if image is None:
        lut = np.zeros((256, 3), np.uint8)
        for k, c in PALETTE.items():
            lut[k] = c
        image = lut[label]
    img_path, gt_path = tmp_path / f"{name}.png", tmp_path / f"{name}_gt.png"
    Image.fromarray(image).save(img_path)
    gt = Image.fromarray(label)
    gt = gt if label_mode is None else gt.convert(label_mode)
    gt.save(gt_path)
    return {"file_name": str(img_path), "sem_seg_file_name": str(gt_path)}


def decode(image_chw):
    """Label of each pixel from its colour (nearest palette colour)."""
    keys = np.array(list(PALETTE))
    cols = np.array([PALETTE[k] for k in keys], np.float32)
    img = image_chw.permute(1, 2, 0).numpy()
    d = ((img[:, :, None, :] - cols) ** 2).sum(-1)
    return keys[d.argmin(-1)], np.sqrt(d.min(-1))


def interior(label, r=1):
    """Pixels whose (2r+1)^2 neighbourhood has a single label (bilinear blends elsewhere); crop
    borders are excluded, their neighbours outside the crop are unknown."""
    p = np.pad(label.astype(np.int64), r, constant_values=-1)
    h, w = label.shape
    same = np.ones_like(label, bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            same &= p[dy:dy + h, dx:dx + w] == label
    return same


def test_train_outputs_are_aligned_and_well_formed(tmp_path):
    label = blocky_label(60, 90)
    d = write_sample(tmp_path, label)
    mapper = SemSegDatasetMapper(cfg_for(["INPUT.PHOTOMETRIC_DISTORTION", False]), is_train=True)
    np.random.seed(0)
    for _ in range(25):
        out = mapper(d)
        img, seg = out["image"], out["sem_seg"]
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        assert 0 <= img.min() <= img.max() <= 255
        assert seg.dtype == torch.int64 and seg.shape == img.shape[1:]
        assert seg.shape[0] <= 40 and seg.shape[1] <= 48  # unpadded crop
        assert (out["height"], out["width"]) == (60, 90) and out["file_name"] == d["file_name"]
        seg = seg.numpy()
        assert set(np.unique(seg)) <= set(np.unique(label))  # nearest: no invented ids
        decoded, dist = decode(img)
        inner = interior(seg)
        assert inner.mean() > 0.4
        np.testing.assert_array_equal(decoded[inner], seg[inner])  # image and label aligned
        assert dist[inner].max() < 80  # unambiguous: palette colours are >= 175 apart


def test_flip_and_resize_keep_alignment_at_pixel_level(tmp_path):
    # a 1-pixel-wide stripe of ignore: survives nearest resize at ratio >= 1, stays aligned
    label = np.zeros((32, 48), np.uint8)
    label[:, 10] = 255
    label[:, 30:] = 1
    d = write_sample(tmp_path, label)
    mapper = SemSegDatasetMapper(cfg_for([
        "INPUT.CROP.ENABLED", False, "INPUT.PHOTOMETRIC_DISTORTION", False,
        "INPUT.IMG_SCALE", [48, 32], "INPUT.RATIO_RANGE", [1.0, 2.0]]), is_train=True)
    flipped = 0
    np.random.seed(1)
    for _ in range(10):
        out = mapper(d)
        seg = out["sem_seg"].numpy()
        cols = np.where((seg == 255).all(0))[0]
        assert len(cols) >= 1  # ignore preserved
        ones = np.where((seg == 1).all(0))[0]
        flipped += int(ones.mean() < seg.shape[1] / 2)
        decoded, _ = decode(out["image"])
        inner = interior(seg)
        np.testing.assert_array_equal(decoded[inner], seg[inner])
    assert 0 < flipped < 10


def test_photometric_changes_image_only(tmp_path):
    label = blocky_label(50, 70, seed=3)
    d = write_sample(tmp_path, label)
    on = SemSegDatasetMapper(cfg_for(), is_train=True)
    off = SemSegDatasetMapper(cfg_for(["INPUT.PHOTOMETRIC_DISTORTION", False]), is_train=True)
    for seed in range(5):
        np.random.seed(seed)
        a = on(d)
        np.random.seed(seed)
        b = off(d)
        # photometric is the last augmentation: same geometry, same label
        torch.testing.assert_close(a["sem_seg"], b["sem_seg"], rtol=0, atol=0)


def test_test_mode_resizes_without_crop(tmp_path):
    label = blocky_label(30, 40)
    d = write_sample(tmp_path, label)
    mapper = SemSegDatasetMapper(cfg_for(), is_train=False)
    out = mapper(d)
    # keep-ratio into (96, 64): factor min(96/40, 64/30) = 2.133 -> 85 x 64
    assert out["image"].shape == (3, 64, 85) and out["sem_seg"].shape == (64, 85)
    assert (out["height"], out["width"]) == (30, 40)
    out = SemSegDatasetMapper(cfg_for(["INPUT.TEST_IMG_SCALE", []]), is_train=False)(
        {"file_name": d["file_name"]})
    assert out["image"].shape == (3, 30, 40) and "sem_seg" not in out
    torch.testing.assert_close(out["image"][:, 0, 0].float(), torch.tensor(PALETTE[label[0, 0]]).float())


def test_rgb_and_bgr_formats(tmp_path):
    label = blocky_label(16, 16)
    d = write_sample(tmp_path, label)
    rgb = SemSegDatasetMapper(cfg_for(["INPUT.TEST_IMG_SCALE", []]), is_train=False)(d)["image"]
    bgr = SemSegDatasetMapper(cfg_for(["INPUT.TEST_IMG_SCALE", [], "INPUT.FORMAT", "BGR"]),
                              is_train=False)(d)["image"]
    torch.testing.assert_close(rgb, bgr.flip(0))


def test_reduce_zero_label(tmp_path):
    label = np.array([[0, 1, 2, 255], [5, 254, 1, 0]], np.uint8)
    d = write_sample(tmp_path, label, image=np.zeros((2, 4, 3), np.uint8))
    out = read_label(d["sem_seg_file_name"], reduce_zero_label=True)
    np.testing.assert_array_equal(out, [[255, 0, 1, 255], [4, 253, 0, 255]])
    mmseg = pytest.importorskip("mmseg")  # noqa: F841
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.datasets.pipelines import LoadAnnotations

    ref = LoadAnnotations(reduce_zero_label=True)(
        {"ann_info": {"seg_map": d["sem_seg_file_name"]}, "seg_fields": []})
    np.testing.assert_array_equal(out, ref["gt_semantic_seg"])


def test_palette_label_reads_indices(tmp_path):
    # Pascal VOC stores class ids as palette indices; mmseg reads the indices, so do we.
    label = blocky_label(16, 16) % NUM_CLASSES
    img = Image.fromarray(label, mode="L").convert("P")
    img.putpalette([v for k in range(256) for v in ((k * 37) % 256, (k * 91) % 256, k)])
    d = write_sample(tmp_path, label)
    img.save(d["sem_seg_file_name"])
    assert Image.open(d["sem_seg_file_name"]).mode == "P"
    np.testing.assert_array_equal(read_label(d["sem_seg_file_name"]), label)
    SemSegDatasetMapper(cfg_for(), is_train=True)(d)


# ---- bad inputs ------------------------------------------------------------------------------
def test_size_mismatch(tmp_path):
    d = write_sample(tmp_path, blocky_label(20, 30), image=np.zeros((20, 31, 3), np.uint8))
    with pytest.raises(ValueError, match=r"label .*_gt\.png is 20x30 .* image .*a\.png is 20x31"):
        SemSegDatasetMapper(cfg_for(), is_train=True)(d)


def test_dataset_dict_size_mismatch(tmp_path):
    d = write_sample(tmp_path, blocky_label(20, 30))
    with pytest.raises(ValueError, match=r"a\.png is 20x30 .* dataset dict says 21x30"):
        SemSegDatasetMapper(cfg_for(), is_train=True)(dict(d, height=21, width=30))


def test_out_of_range_label_values(tmp_path):
    label = blocky_label(20, 30) % NUM_CLASSES
    label[3, 4], label[5, 6] = 7, 19
    d = write_sample(tmp_path, label)
    msg = r"_gt\.png has 2 pixels with values \{7, 19\} outside \[0, 5\)"
    with pytest.raises(ValueError, match=msg):
        SemSegDatasetMapper(cfg_for(), is_train=True)(d)
    # CHECK_LABELS off: no error
    SemSegDatasetMapper(cfg_for(["INPUT.CHECK_LABELS", False]), is_train=True)(d)


def test_one_based_labels_hint(tmp_path):
    d = write_sample(tmp_path, (blocky_label(20, 30) % NUM_CLASSES) + 1)
    with pytest.raises(ValueError, match="REDUCE_ZERO_LABEL"):
        SemSegDatasetMapper(cfg_for(), is_train=True)(d)


def test_rgb_label_rejected(tmp_path):
    label = blocky_label(20, 30) % NUM_CLASSES
    d = write_sample(tmp_path, label)
    Image.fromarray(np.stack([label * 40, label, label], -1)).save(d["sem_seg_file_name"])
    with pytest.raises(ValueError, match=r"_gt\.png is a 3-channel 'RGB' image.*colour"):
        SemSegDatasetMapper(cfg_for(), is_train=True)(d)
    Image.fromarray(np.stack([label] * 3, -1)).save(d["sem_seg_file_name"])
    with pytest.raises(ValueError, match="channels are equal"):
        SemSegDatasetMapper(cfg_for(), is_train=True)(d)


def test_palette_label_out_of_range(tmp_path):
    label = blocky_label(16, 16) % NUM_CLASSES
    label[0, 0] = 9
    d = write_sample(tmp_path, label, label_mode="P")
    with pytest.raises(ValueError, match=r"values \{9\}"):
        SemSegDatasetMapper(cfg_for(), is_train=True)(d)


@pytest.mark.parametrize("content", [b"", b"not an image at all", "truncated"])
def test_corrupt_image(tmp_path, content):
    d = write_sample(tmp_path, blocky_label(40, 40))
    if content == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8)).save(
            tmp_path / "t.jpg")
        content = (tmp_path / "t.jpg").read_bytes()[:300]
    with open(d["file_name"], "wb") as f:
        f.write(content)
    with pytest.raises(ValueError, match=r"cannot read image .*a\.png"):
        SemSegDatasetMapper(cfg_for(), is_train=True)(d)


def test_corrupt_or_missing_label(tmp_path):
    d = write_sample(tmp_path, blocky_label(20, 20))
    (tmp_path / "a_gt.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"cannot read label .*a_gt\.png"):
        SemSegDatasetMapper(cfg_for(), is_train=True)(d)
    with pytest.raises(ValueError, match=r"cannot read label .*missing\.png"):
        SemSegDatasetMapper(cfg_for(), is_train=True)(dict(d, sem_seg_file_name="missing.png"))


def test_training_sample_without_label(tmp_path):
    d = write_sample(tmp_path, blocky_label(20, 20))
    with pytest.raises(ValueError, match=r"a\.png has no 'sem_seg_file_name'"):
        SemSegDatasetMapper(cfg_for(), is_train=True)({"file_name": d["file_name"]})


def test_skip_bad_samples(tmp_path, caplog):
    good = write_sample(tmp_path, blocky_label(40, 40), name="good")
    bad = write_sample(tmp_path, blocky_label(40, 40) % NUM_CLASSES + 7, name="bad")
    skip = SemSegDatasetMapper(cfg_for(["INPUT.SKIP_BAD_SAMPLES", True]), is_train=True)
    with caplog.at_level(logging.WARNING):
        assert skip(bad) is None
    assert "bad_gt.png" in caplog.text
    # Detectron2's MapDataset replaces a None by another sample
    ds = MapDataset([bad, good], skip)
    assert ds[0]["file_name"] == good["file_name"]
    # never skipped at test time: evaluation must see every image
    test = SemSegDatasetMapper(cfg_for(["INPUT.SKIP_BAD_SAMPLES", True]), is_train=False)
    with pytest.raises(BadSampleError):
        test(bad)
    # and off by default
    with pytest.raises(BadSampleError):
        SemSegDatasetMapper(cfg_for(), is_train=True)(bad)
