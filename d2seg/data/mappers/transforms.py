"""MMSegmentation 0.x's train/test pipeline as Detectron2 augmentations.

mmseg's ``Resize -> RandomCrop(cat_max_ratio) -> RandomFlip -> PhotoMetricDistortion`` maps onto
:class:`ResizeRatioRange`, Detectron2's ``RandomCrop_CategoryAreaConstraint`` and ``RandomFlip``
and :class:`PhotoMetricDistortion`. Each augmentation draws its random numbers from ``np.random``
in mmseg's order, so a pipeline seeded like mmseg's produces the same crops and pixels.
Normalisation and padding are done by the model (``EncoderDecoder``), not here.
"""
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
from fvcore.transforms.transform import NoOpTransform, Transform

from detectron2.data import transforms as T

__all__ = [
    "CV2ResizeTransform",
    "ResizeRatioRange",
    "PhotoMetricTransform",
    "PhotoMetricDistortion",
    "rescale_size",
    "RotateTransform",
    "RandomRotate",
    "ResizeToMultiple",
    "build_train_augmentations",
    "build_test_augmentations",
    "check_crop_size",
]


def rescale_size(w: int, h: int, scale: Tuple[float, float]) -> Tuple[int, int]:
    """mmcv's ``rescale_size``: the largest keep-ratio (w, h) inside ``scale`` = (long, short)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    # int(x + 0.5) as mmcv._scale_size; >= 1 only guards sizes where mmcv would crash.
    return max(int(w * float(factor) + 0.5), 1), max(int(h * float(factor) + 0.5), 1)


class CV2ResizeTransform(Transform):
    """Resize with cv2 as ``mmcv.imresize``: bilinear image, nearest-neighbour segmentation.

    (Detectron2's ``ResizeTransform`` resizes uint8 images with PIL, whose bilinear filter
    differs from cv2's.)
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def _resize(self, img: np.ndarray, interp: int) -> np.ndarray:
        assert img.shape[:2] == (self.h, self.w), f"expected {(self.h, self.w)}, got {img.shape}"
        if (self.new_h, self.new_w) == (self.h, self.w):
            return img
        out = cv2.resize(img, (self.new_w, self.new_h), interpolation=interp)
        # cv2 drops a trailing channel axis of size 1
        return out[..., None] if img.ndim == 3 and out.ndim == 2 else out

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._resize(img, cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._resize(segmentation, cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = coords.astype(np.float32, copy=True)
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords

    def inverse(self) -> Transform:
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w)


class ResizeRatioRange(T.Augmentation):
    """mmseg's ``Resize(img_scale, ratio_range, keep_ratio=True)``.

    With ``ratio_range`` (min, max), ratio r ~ U[min, max) and the target is
    ``(int(long * r), int(short * r))``; without it the target is ``img_scale`` itself. The image
    is then resized as ``mmcv.imrescale``: as large as possible with its long side <= the target's
    long side and its short side <= the target's short side. ``img_scale=None`` with a ratio range
    scales the image's own (w, h) (mmseg's mode 1); both None = no resize.
    """

    def __init__(self, img_scale: Optional[Sequence[int]],
                 ratio_range: Optional[Sequence[float]] = None):
        super().__init__()
        img_scale = tuple(img_scale) if img_scale else None
        ratio_range = tuple(ratio_range) if ratio_range else None
        if img_scale is not None and (len(img_scale) != 2 or min(img_scale) <= 0):
            raise ValueError(f"img_scale must be 2 positive ints (long, short), got {img_scale}")
        if ratio_range is not None and (
            len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]
        ):
            raise ValueError(f"ratio_range must be (min, max), 0 < min <= max; got {ratio_range}")
        self._init(locals())

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        scale = self.img_scale if self.img_scale is not None else (w, h)
        if self.ratio_range is not None:
            lo, hi = self.ratio_range
            # same expression (and float rounding) as mmseg's random_sample_ratio
            ratio = np.random.random_sample() * (hi - lo) + lo
            scale = int(scale[0] * ratio), int(scale[1] * ratio)
        elif self.img_scale is None:
            return NoOpTransform()
        new_w, new_h = rescale_size(w, h, scale)
        return CV2ResizeTransform(h, w, new_h, new_w)


class RotateTransform(Transform):
    """``mmcv.imrotate(angle)`` about the centre ((w - 1) / 2, (h - 1) / 2), same size:
    bilinear image with ``pad_value`` corners, nearest-neighbour label with ``seg_pad_value``."""

    def __init__(self, h: int, w: int, angle: float, pad_value: int = 0,
                 seg_pad_value: int = 255):
        super().__init__()
        self._set_attributes(locals())
        # mmcv: cv2's angle is counter-clockwise, mmcv's clockwise
        self.matrix = cv2.getRotationMatrix2D(((w - 1) * 0.5, (h - 1) * 0.5), -angle, 1.0)

    def _warp(self, img: np.ndarray, interp: int, value) -> np.ndarray:
        assert img.shape[:2] == (self.h, self.w), f"expected {(self.h, self.w)}, got {img.shape}"
        out = cv2.warpAffine(img, self.matrix, (self.w, self.h), flags=interp,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=value)
        return out[..., None] if img.ndim == 3 and out.ndim == 2 else out

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._warp(img, cv2.INTER_LINEAR, self.pad_value)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._warp(segmentation, cv2.INTER_NEAREST, self.seg_pad_value)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64)
        return (coords @ self.matrix[:, :2].T + self.matrix[:, 2]).astype(np.float32)


class RandomRotate(T.Augmentation):
    """mmseg's ``RandomRotate(prob, degree, pad_val, seg_pad_val)`` (center None, no
    auto_bound): draws ``rand() < prob`` and then the angle ``uniform(min, max)`` from
    ``np.random`` -- both always, in mmseg's order -- and rotates only when the first says so."""

    def __init__(self, prob: float, degree: Sequence[float], pad_value: int = 0,
                 seg_pad_value: int = 255):
        super().__init__()
        if not 0 <= prob <= 1:
            raise ValueError(f"INPUT.ROTATE.PROB={prob}: a probability in [0, 1]")
        if isinstance(degree, (int, float)):  # mmseg: a number d means (-d, d)
            degree = (-degree, degree)
        if len(degree) != 2:
            raise ValueError(f"INPUT.ROTATE.DEGREE={list(degree)}: (min, max) in degrees")
        degree = (min(degree), max(degree))
        self._init(locals())

    def get_transform(self, image) -> Transform:
        rotate = np.random.rand() < self.prob
        angle = np.random.uniform(*self.degree)
        if not rotate:
            return NoOpTransform()
        h, w = image.shape[:2]
        return RotateTransform(h, w, float(angle), self.pad_value, self.seg_pad_value)


class ResizeToMultiple(T.Augmentation):
    """mmseg's ``ResizeToMultiple(size_divisor)`` (``mmcv.imresize_to_multiple`` with
    scale_factor 1): both sides rounded UP to a multiple of ``size_divisor`` by a second resize
    (bilinear image, nearest label); no change when they already are."""

    def __init__(self, size_divisor: int):
        super().__init__()
        if size_divisor <= 0:
            raise ValueError(f"INPUT.TEST_SIZE_DIVISOR={size_divisor}: a positive int (0 = off)")
        self._init(locals())

    @staticmethod
    def target(h: int, w: int, size_divisor: int) -> Tuple[int, int]:
        d = size_divisor
        return -(-h // d) * d, -(-w // d) * d

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        return CV2ResizeTransform(h, w, *self.target(h, w, self.size_divisor))


class PhotoMetricTransform(Transform):
    """The deterministic part of mmseg's ``PhotoMetricDistortion`` (image only, uint8).

    Parameters are None when an operation is skipped. Brightness/contrast are per-channel and
    so format-independent; saturation and hue go through cv2's HSV of the image's channel order
    (cv2's RGB2HSV on RGB = BGR2HSV on BGR, which is what mmseg uses).
    """

    def __init__(
        self,
        brightness: Optional[float],
        contrast: Optional[float],
        contrast_first: bool,
        saturation: Optional[float],
        hue: Optional[int],
        image_format: str = "RGB",
    ):
        super().__init__()
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"PhotoMetricDistortion needs RGB or BGR images, not {image_format!r}")
        self._set_attributes(locals())

    @staticmethod
    def _convert(img: np.ndarray, alpha=1, beta=0) -> np.ndarray:
        # float32 arithmetic, clip, truncating cast: mmseg's PhotoMetricDistortion.convert
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.dtype != np.uint8:
            raise ValueError(f"PhotoMetricDistortion works on uint8 images, got {img.dtype}")
        to_hsv, from_hsv = (
            (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB) if self.image_format == "RGB"
            else (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR)
        )
        if self.brightness is not None:
            img = self._convert(img, beta=self.brightness)
        if self.contrast_first and self.contrast is not None:
            img = self._convert(img, alpha=self.contrast)
        if self.saturation is not None:
            img = cv2.cvtColor(img, to_hsv)
            img[:, :, 1] = self._convert(img[:, :, 1], alpha=self.saturation)
            img = cv2.cvtColor(img, from_hsv)
        if self.hue is not None:
            img = cv2.cvtColor(img, to_hsv)
            img[:, :, 0] = (img[:, :, 0].astype(int) + self.hue) % 180  # OpenCV hue is 0..179
            img = cv2.cvtColor(img, from_hsv)
        if not self.contrast_first and self.contrast is not None:
            img = self._convert(img, alpha=self.contrast)
        return img

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords


class PhotoMetricDistortion(T.Augmentation):
    """mmseg's ``PhotoMetricDistortion``: brightness, contrast (second or last), saturation,
    hue, each with probability 0.5. Random numbers are drawn from ``np.random`` in mmseg's order
    (including its ``randint(-hue_delta, hue_delta)``, whose upper bound is exclusive)."""

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
        image_format: str = "RGB",
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image) -> Transform:
        rnd = np.random
        brightness = (
            rnd.uniform(-self.brightness_delta, self.brightness_delta) if rnd.randint(2) else None
        )
        contrast = None
        # mmseg: mode == 1 -> contrast right after brightness, mode == 0 -> contrast last
        contrast_first = bool(rnd.randint(2))
        if contrast_first and rnd.randint(2):
            contrast = rnd.uniform(*self.contrast_range)
        saturation = rnd.uniform(*self.saturation_range) if rnd.randint(2) else None
        hue = rnd.randint(-self.hue_delta, self.hue_delta) if rnd.randint(2) else None
        if not contrast_first and rnd.randint(2):
            contrast = rnd.uniform(*self.contrast_range)
        return PhotoMetricTransform(
            brightness, contrast, contrast_first, saturation, hue, self.image_format
        )


def check_crop_size(cfg) -> None:
    """INPUT.CROP.SIZE (with the crop enabled) must be two positive ints (h, w), a multiple of
    INPUT.SIZE_DIVISIBILITY. (A crop larger than the resized image is fine: as mmseg, the image
    is cropped to its own size and the model pads it to CROP.SIZE.)"""
    crop = cfg.INPUT.CROP
    if not crop.ENABLED:
        return
    size = list(crop.SIZE)
    # otherwise: an IndexError (one value), a third value ignored, 0-pixel or mirrored crops
    # (0 / negative), a TypeError deep in the crop or the model's padding (96.0)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                 for v in size):
        raise ValueError(f"INPUT.CROP.SIZE={size} must be two positive ints (h, w)")
    # training pads every crop to CROP.SIZE, then the batch to SIZE_DIVISIBILITY: a crop that is
    # not a multiple of it would be padded past the crop (ignored pixels the loss averages over)
    div = cfg.INPUT.SIZE_DIVISIBILITY
    if div > 0 and any(v % div for v in size):
        raise ValueError(f"INPUT.CROP.SIZE={size} is not a multiple of "
                         f"INPUT.SIZE_DIVISIBILITY={div}")


def build_train_augmentations(cfg):
    """mmseg's train pipeline: Resize(IMG_SCALE, RATIO_RANGE) -> RandomCrop(CROP.SIZE,
    cat_max_ratio) -> RandomFlip(0.5) -> RandomRotate(ROTATE.*) -> PhotoMetricDistortion
    (the crop and the rotation where the config enables them)."""
    inp = cfg.INPUT
    augs = [ResizeRatioRange(inp.IMG_SCALE, inp.RATIO_RANGE)]
    check_crop_size(cfg)
    if inp.CROP.ENABLED:
        if inp.CROP.TYPE != "absolute":  # the model pads batches to CROP.SIZE (h, w) as well
            raise ValueError(f"INPUT.CROP.TYPE={inp.CROP.TYPE!r}: d2seg crops are 'absolute'")
        # Detectron2's crop = mmseg's: up to 10 tries for a window with > 1 class and no class
        # (ignore excluded) covering >= max_area. (After 10 failures mmseg draws an 11th window,
        # Detectron2 keeps the 10th: equally random.)
        augs.append(T.RandomCrop_CategoryAreaConstraint(
            "absolute", tuple(inp.CROP.SIZE), inp.CROP.SINGLE_CATEGORY_MAX_AREA,
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        ))
    if inp.RANDOM_FLIP != "none":
        if inp.RANDOM_FLIP not in ("horizontal", "vertical"):
            raise ValueError(f"INPUT.RANDOM_FLIP={inp.RANDOM_FLIP!r}: horizontal, vertical or none")
        augs.append(T.RandomFlip(
            0.5, horizontal=inp.RANDOM_FLIP == "horizontal", vertical=inp.RANDOM_FLIP == "vertical"
        ))
    if inp.ROTATE.PROB > 0:
        augs.append(RandomRotate(inp.ROTATE.PROB, tuple(inp.ROTATE.DEGREE),
                                 inp.ROTATE.PAD_VALUE, inp.ROTATE.SEG_PAD_VALUE))
    if inp.PHOTOMETRIC_DISTORTION:
        augs.append(PhotoMetricDistortion(image_format=inp.FORMAT))
    return augs


def build_test_augmentations(cfg):
    """mmseg's test pipeline: keep-ratio resize to TEST_IMG_SCALE ([] = original size), then
    ResizeToMultiple(TEST_SIZE_DIVISOR) where set."""
    scale = cfg.INPUT.TEST_IMG_SCALE
    augs = [ResizeRatioRange(scale)] if scale else []
    if cfg.INPUT.TEST_SIZE_DIVISOR:
        augs.append(ResizeToMultiple(cfg.INPUT.TEST_SIZE_DIVISOR))
    return augs
