"""d2seg's augmentations against mmseg 0.30's pipeline (mmcv.imrescale sizes, same RNG draws)."""
import numpy as np
import pytest

from detectron2.data import transforms as T

from d2seg.data.mappers import (
    CV2ResizeTransform,
    PhotoMetricDistortion,
    ResizeRatioRange,
    build_test_augmentations,
    build_train_augmentations,
)
from d2seg.data.mappers.transforms import rescale_size

import common


def get_d2seg_cfg(opts=()):
    return common.get_d2seg_cfg(common.REPO_CONFIGS / "_base_/Base-Segmentation.yaml", opts)


def _mmseg_pipeline_classes():
    pytest.importorskip("mmseg")
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.datasets.pipelines import transforms as mt

    return mt


def _image_and_label(h, w, seed=0, num_classes=5):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # blocky label so crops see several classes; some ignore
    label = rng.integers(0, num_classes, (h // 8 + 1, w // 8 + 1)).repeat(8, 0).repeat(8, 1)
    label = label[:h, :w].astype(np.uint8)
    label[rng.random((h, w)) < 0.05] = 255
    return img, label


def test_rescale_size_matches_mmcv():
    mmcv = pytest.importorskip("mmcv")
    rng = np.random.default_rng(0)
    for _ in range(300):
        w, h = (int(x) for x in rng.integers(5, 3000, 2))
        scale = tuple(int(x) for x in rng.integers(10, 4000, 2))
        assert rescale_size(w, h, scale) == mmcv.rescale_size((w, h), scale)


def test_resize_pixels_match_mmcv_imrescale():
    mmcv = pytest.importorskip("mmcv")
    img, label = _image_and_label(37, 53)
    for scale in [(100, 50), (30, 20), (53, 37), (2048, 512)]:
        w, h = rescale_size(53, 37, scale)
        tfm = CV2ResizeTransform(37, 53, h, w)
        np.testing.assert_array_equal(tfm.apply_image(img), mmcv.imrescale(img, scale))
        np.testing.assert_array_equal(
            tfm.apply_segmentation(label), mmcv.imrescale(label, scale, interpolation="nearest")
        )


def test_resize_ratio_range_matches_mmseg_resize():
    mt = _mmseg_pipeline_classes()
    img, label = _image_and_label(40, 60)
    for scale, ratio_range in [((128, 64), (0.5, 2.0)), ((64, 128), (0.75, 1.25)),
                               ((90, 30), None), (None, (0.5, 1.5))]:
        ref_t = mt.Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)
        ours = ResizeRatioRange(scale, ratio_range)
        for seed in range(10):
            common.assert_matches_mmseg_steps([ref_t], ours, img, label, seed)


def test_resize_without_scale_or_ratio_is_identity():
    img, _ = _image_and_label(20, 30)
    assert ResizeRatioRange(None, None).get_transform(img).apply_image(img) is img
    with pytest.raises(ValueError, match="ratio_range"):
        ResizeRatioRange((10, 10), (2.0, 1.0))


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_photometric_distortion_matches_mmseg(image_format):
    mt = _mmseg_pipeline_classes()
    ref_t = mt.PhotoMetricDistortion()
    ours = PhotoMetricDistortion(image_format=image_format)
    bgr, _ = _image_and_label(24, 32)
    ops_seen = set()
    for seed in range(40):
        np.random.seed(seed)
        ref = ref_t({"img": bgr.copy()})["img"]  # mmseg works on BGR
        ref_next = np.random.random_sample()
        np.random.seed(seed)
        tfm = ours.get_transform(bgr)
        assert np.random.random_sample() == ref_next  # same number of draws
        ops_seen |= {k for k in ("brightness", "contrast", "saturation", "hue")
                     if getattr(tfm, k) is not None}
        ops_seen.add(("contrast_first", tfm.contrast_first))
        inp = bgr if image_format == "BGR" else bgr[..., ::-1].copy()
        out = tfm.apply_image(inp.copy())
        out = out if image_format == "BGR" else out[..., ::-1]
        np.testing.assert_array_equal(out, ref, err_msg=f"seed {seed}")
    assert len(ops_seen) == 6  # every op and both contrast positions were exercised


def test_full_train_pipeline_matches_mmseg():
    """Resize -> RandomCrop(cat_max_ratio) -> RandomFlip -> PhotoMetricDistortion, seeded alike."""
    mt = _mmseg_pipeline_classes()
    img, label = _image_and_label(48, 64)
    ref_pipeline = [
        mt.Resize(img_scale=(96, 48), ratio_range=(0.5, 2.0)),
        mt.RandomCrop(crop_size=(32, 40), cat_max_ratio=0.75),
        mt.RandomFlip(prob=0.5),
        mt.PhotoMetricDistortion(),
    ]
    cfg = get_d2seg_cfg(opts=[
        "INPUT.IMG_SCALE", [96, 48], "INPUT.RATIO_RANGE", [0.5, 2.0], "INPUT.CROP.ENABLED", True,
        "INPUT.CROP.SIZE", [32, 40], "INPUT.FORMAT", "BGR", "INPUT.RANDOM_FLIP", "horizontal",
    ])
    augs = T.AugmentationList(build_train_augmentations(cfg))
    for seed in range(20):
        common.assert_matches_mmseg_steps(ref_pipeline, augs, img, label, seed)


def test_crop_category_constraint():
    # class 1 fills columns 40..63, class 0 the rest: a 32x32 window is valid (2 classes, none
    # >= 75%) only for some offsets; 255 must not count as a class.
    label = np.zeros((64, 64), np.uint8)
    label[:, 40:] = 1
    label[:8] = 255
    cfg = get_d2seg_cfg(opts=["INPUT.CROP.ENABLED", True, "INPUT.CROP.SIZE", [32, 32],
                              "INPUT.RATIO_RANGE", [], "INPUT.IMG_SCALE", []])
    crop = build_train_augmentations(cfg)[1]
    assert isinstance(crop, T.RandomCrop_CategoryAreaConstraint)
    img = np.zeros((64, 64, 3), np.uint8)
    ok = 0
    np.random.seed(0)
    for _ in range(100):
        window = crop.get_transform(img, label).apply_segmentation(label)
        assert window.shape == (32, 32)
        cnt = np.bincount(window[window != 255], minlength=2)
        ok += int((cnt > 0).sum() > 1 and cnt.max() < 0.75 * cnt.sum())
    assert ok >= 95  # an unconstrained crop is valid for ~40% of offsets


def test_crop_smaller_image_keeps_whole_image():
    cfg = get_d2seg_cfg(opts=["INPUT.CROP.ENABLED", True, "INPUT.CROP.SIZE", [64, 64]])
    crop = build_train_augmentations(cfg)[1]
    img, label = _image_and_label(20, 30)
    assert crop.get_transform(img, label).apply_image(img).shape == (20, 30, 3)


def test_build_augmentations_follow_config():
    cfg = get_d2seg_cfg(opts=["INPUT.CROP.ENABLED", False, "INPUT.RANDOM_FLIP", "none",
                              "INPUT.PHOTOMETRIC_DISTORTION", False])
    augs = build_train_augmentations(cfg)
    assert [type(a) for a in augs] == [ResizeRatioRange]
    assert (augs[0].img_scale, augs[0].ratio_range) == ((2048, 1024), (0.5, 2.0))
    cfg = get_d2seg_cfg(opts=["INPUT.TEST_IMG_SCALE", []])
    assert build_test_augmentations(cfg) == []
    cfg = get_d2seg_cfg(opts=["INPUT.TEST_IMG_SCALE", [2048, 512]])
    (test_aug,) = build_test_augmentations(cfg)
    assert test_aug.get_transform(np.zeros((100, 300, 3))).new_w == 1536  # 512/100 * 300
