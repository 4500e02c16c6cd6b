"""Reads one image + label map and applies mmseg's train or test pipeline."""
import copy
import logging
from typing import List, Optional, Sequence

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import transforms as T

from ..datasets.detectron2_builtin import dataset_metadata
from ..image_io import BadSampleError, read_image, read_label
from .transforms import build_test_augmentations, build_train_augmentations

__all__ = ["SemSegDatasetMapper", "BadSampleError", "read_label", "check_label_values",
           "dataset_reduce_zero_label", "image_to_tensor"]

logger = logging.getLogger(__name__)


def check_label_values(label: np.ndarray, num_classes: int, ignore_value: int, file_name: str,
                       reduce_zero_label: bool = False) -> None:
    """Raises BadSampleError unless every value is in [0, num_classes) or ``ignore_value``."""
    bad = (label >= num_classes) & (label != ignore_value)
    if not bad.any():
        return
    values = np.unique(label[bad])
    shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    hint = ""
    if not reduce_zero_label and values.max() == num_classes and not (label == 0).any():
        hint = " Ids look 1-based: set INPUT.REDUCE_ZERO_LABEL True (0 = ignore)?"
    raise BadSampleError(
        f"label {file_name} has {int(bad.sum())} pixels with values {{{shown}}} outside "
        f"[0, {num_classes}) (NUM_CLASSES={num_classes}, IGNORE_VALUE={ignore_value}"
        f"{', after REDUCE_ZERO_LABEL' if reduce_zero_label else ''}).{hint}"
    )


def dataset_reduce_zero_label(cfg, dataset_names: Sequence[str]) -> bool:
    """Whether labels of ``dataset_names`` are read with reduce_zero_label: the datasets'
    metadata ``reduce_zero_label`` where they set it (ADE20K raw: True, Detectron2's converted
    ADE20K: False), else ``INPUT.REDUCE_ZERO_LABEL``. Datasets that disagree are an error here;
    mixed in one loader they still work when their dicts carry ``reduce_zero_label`` (as those
    of register_sem_seg_folder do)."""
    default = bool(cfg.INPUT.REDUCE_ZERO_LABEL)
    values = {n: dataset_metadata(n).get("reduce_zero_label", None) for n in dataset_names}
    values = {n: bool(v) for n, v in values.items() if v is not None}
    if len(set(values.values())) > 1:
        raise ValueError(f"datasets disagree on reduce_zero_label: {values}")
    value = next(iter(values.values()), default)
    if values and value != default:
        logger.info(f"reduce_zero_label={value} from the metadata of {sorted(values)} "
                    f"(INPUT.REDUCE_ZERO_LABEL={default} applies to datasets that do not say)")
    return value


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x C array -> C x H x W tensor: uint8 stays uint8 (every pipeline step of mmseg's
    keeps uint8, so nothing is lost), any other dtype becomes float32 (the model's input dtype)."""
    dtype = np.uint8 if image.dtype == np.uint8 else np.float32
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=dtype))


class SemSegDatasetMapper:
    """Detectron2 mapper for semantic segmentation with mmseg's pipeline.

    Input: a dataset dict with ``file_name`` and (for training) ``sem_seg_file_name``.
    Output: the dict plus ``image`` (C x H x W uint8, in ``image_format``: a quarter of float32's
    host-to-device traffic; the model normalises it on its device), ``sem_seg``
    (H x W long, aligned with ``image``; present whenever a label file is given), ``height`` and
    ``width`` (the ORIGINAL size, at which the model returns its prediction).

    Training applies ``augmentations`` (resize / crop / flip / photometric, unpadded: the model
    pads); testing resizes only. With ``skip_bad_samples`` a training sample that fails to load
    or validate is logged and ``None`` is returned, which Detectron2's ``MapDataset`` replaces by
    another sample; at test time errors are always raised, so evaluation sees every image.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List,
        image_format: str = "RGB",
        num_classes: int,
        ignore_value: int = 255,
        reduce_zero_label: bool = False,
        check_labels: bool = True,
        skip_bad_samples: bool = False,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.reduce_zero_label = reduce_zero_label
        self.check_labels = check_labels
        self.skip_bad_samples = skip_bad_samples and is_train
        mode = "training" if is_train else "inference"
        logger.info(f"[SemSegDatasetMapper] augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_names: Optional[Sequence[str]] = None):
        """``dataset_names`` (default: DATASETS.TRAIN when training) decide reduce_zero_label
        (see :func:`dataset_reduce_zero_label`); a dict's own ``reduce_zero_label`` wins."""
        augs = build_train_augmentations(cfg) if is_train else build_test_augmentations(cfg)
        if dataset_names is None:
            dataset_names = cfg.DATASETS.TRAIN if is_train else ()
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "reduce_zero_label": dataset_reduce_zero_label(cfg, dataset_names),
            "check_labels": cfg.INPUT.CHECK_LABELS,
            "skip_bad_samples": cfg.INPUT.SKIP_BAD_SAMPLES,
        }

    def read_image(self, file_name: str) -> np.ndarray:
        """The one place images are decoded: H x W x C uint8 in ``image_format``."""
        return read_image(file_name, format=self.image_format)  # cv2, as mmseg

    def read(self, dataset_dict):
        """Image (H x W x C uint8) and label (H x W uint8 or None), validated."""
        file_name = dataset_dict["file_name"]
        try:
            image = self.read_image(file_name)
        except Exception as e:  # missing, truncated or not an image
            raise BadSampleError(f"cannot read image {file_name}: {type(e).__name__}: {e}") from e
        h, w = image.shape[:2]
        if dataset_dict.get("height", h) != h or dataset_dict.get("width", w) != w:
            raise BadSampleError(
                f"image {file_name} is {h}x{w} (HxW) but the dataset dict says "
                f"{dataset_dict.get('height')}x{dataset_dict.get('width')}"
            )
        label_file = dataset_dict.get("sem_seg_file_name")
        if label_file is None:
            if self.is_train:
                raise BadSampleError(f"training sample {file_name} has no 'sem_seg_file_name'")
            return image, None
        reduce_zero_label = dataset_dict.get("reduce_zero_label", self.reduce_zero_label)
        label = read_label(label_file, reduce_zero_label)
        if label.shape != (h, w):
            raise BadSampleError(
                f"label {label_file} is {label.shape[0]}x{label.shape[1]} (HxW) but its image "
                f"{file_name} is {h}x{w}"
            )
        if self.check_labels:
            check_label_values(label, self.num_classes, self.ignore_value, label_file,
                               reduce_zero_label)
        return image, label

    def __call__(self, dataset_dict) -> Optional[dict]:
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            image, label = self.read(dataset_dict)
        except BadSampleError as e:
            if not self.skip_bad_samples:
                raise
            logger.warning(f"Skipping a bad sample (INPUT.SKIP_BAD_SAMPLES): {e}")
            return None
        height, width = image.shape[:2]

        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image, label = aug_input.image, aug_input.sem_seg

        dataset_dict["image"] = image_to_tensor(image)
        if label is not None:
            dataset_dict["sem_seg"] = torch.from_numpy(label.astype(np.int64))
        dataset_dict["height"], dataset_dict["width"] = height, width
        return dataset_dict
