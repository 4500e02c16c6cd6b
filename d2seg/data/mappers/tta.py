"""The views of mmseg's multi-scale + flip test (``MultiScaleFlipAug`` with ``img_ratios``)."""
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from detectron2.config import configurable

from .transforms import CV2ResizeTransform, ResizeToMultiple, rescale_size

__all__ = ["SemSegTTAMapper"]

logger = logging.getLogger(__name__)


class SemSegTTAMapper:
    """Turns one test input (a dict whose ``image`` is the ORIGINAL image, C x H x W, 0-255) into
    its views, in mmseg's order (each ratio, then unflipped / flipped):

    for each ratio r the original image is resized with cv2 (keep ratio, as ``mmcv.imrescale``)
    into ``(int(long * r), int(short * r))`` of ``img_scale`` (mmseg's ``img_scale x img_ratios``;
    without ``img_scale`` the image's own (w, h) x r; with ``min_size``, mmseg's
    ``Resize(min_size=...)``, to the short side ``max(int(short * r), min_size)``), with ``size_divisor`` resized again so both
    sides are multiples of it (mmseg's ``ResizeToMultiple`` in the views' transforms), then
    optionally flipped horizontally.
    Each view dict holds ``image``, ``height``/``width`` (the original size, at which the model
    returns its logits) and ``flip``.
    """

    @configurable
    def __init__(self, *, img_scale: Optional[Sequence[int]], ratios: Sequence[float],
                 flip: bool = True, size_divisor: int = 0, min_size: int = 0):
        if not ratios or min(ratios) <= 0:
            raise ValueError(f"TEST.AUG.RATIOS must be positive ratios, got {list(ratios)}")
        if min_size < 0:
            raise ValueError(f"TEST.AUG.MIN_SIZE={min_size}: 0 (none) or a positive size")
        self.min_size = min_size
        self.img_scale = tuple(img_scale) if img_scale else None
        self.ratios = [float(r) for r in ratios]
        self.flip = flip
        self.size_divisor = size_divisor
        self._warned = False

    @classmethod
    def from_config(cls, cfg):
        return {"img_scale": cfg.INPUT.TEST_IMG_SCALE, "ratios": cfg.TEST.AUG.RATIOS,
                "flip": cfg.TEST.AUG.FLIP, "size_divisor": cfg.INPUT.TEST_SIZE_DIVISOR,
                "min_size": cfg.TEST.AUG.MIN_SIZE}

    @staticmethod
    def _to_numpy(image: torch.Tensor) -> np.ndarray:
        arr = image.permute(1, 2, 0).cpu().numpy()
        # uint8 pictures (what the test mapper loads) are resized as uint8, as mmcv does
        if arr.dtype == np.uint8:
            return arr
        if arr.min() >= 0 and arr.max() <= 255 and np.array_equal(arr, np.round(arr)):
            return arr.astype(np.uint8)
        return np.ascontiguousarray(arr, dtype=np.float32)

    def resized_images(self, dataset_dict: Dict) -> List[torch.Tensor]:
        """The image resized to each ratio (C x H x W, on the host: cv2 gives mmcv's exact pixels),
        unflipped; uint8 for a uint8 input (the mappers' output), float32 otherwise.
        :class:`SemanticSegmentorWithTTA` moves each to the device once and flips it there."""
        image = self._to_numpy(dataset_dict["image"])
        out_dtype = np.uint8 if dataset_dict["image"].dtype == torch.uint8 else np.float32
        h, w = image.shape[:2]
        height, width = dataset_dict.get("height", h), dataset_dict.get("width", w)
        if (h, w) != (height, width):
            # The loader already resized it: views can only be made from this copy.
            if not self._warned:
                logger.warning(f"TTA input is {h}x{w} but the original is {height}x{width}: test "
                               "with an unresized loader (Trainer.build_tta_test_loader) for "
                               "mmseg's views")
                self._warned = True
            image = CV2ResizeTransform(h, w, height, width).apply_image(image)
        images = []
        for ratio in self.ratios:
            scale = self.img_scale if self.img_scale is not None else (width, height)
            target = (int(scale[0] * ratio), int(scale[1] * ratio))
            if self.min_size:  # mmseg's Resize(min_size): the short side, at least min_size
                short = max(min(target), self.min_size)
                target = ((short * height / width, short) if height > width
                          else (short, short * width / height))
            new_w, new_h = rescale_size(width, height, target)
            resized = CV2ResizeTransform(height, width, new_h, new_w).apply_image(image)
            if self.size_divisor:  # a second resize, from the rescaled image (as mmseg)
                resized = ResizeToMultiple(self.size_divisor).get_transform(resized) \
                    .apply_image(resized)
            images.append(torch.from_numpy(
                np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=out_dtype)))
        return images

    def flips(self) -> List[bool]:
        return [False, True] if self.flip else [False]

    def __call__(self, dataset_dict: Dict) -> List[Dict]:
        image = dataset_dict["image"]
        height = dataset_dict.get("height", image.shape[-2])
        width = dataset_dict.get("width", image.shape[-1])
        return [{"image": resized.flip(-1) if flip else resized, "height": height, "width": width,
                 "flip": flip}
                for resized in self.resized_images(dataset_dict) for flip in self.flips()]
