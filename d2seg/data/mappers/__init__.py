from .semseg_mapper import (
    BadSampleError,
    SemSegDatasetMapper,
    check_label_values,
    dataset_reduce_zero_label,
    read_label,
)
from .tta import SemSegTTAMapper
from .transforms import (
    CV2ResizeTransform,
    PhotoMetricDistortion,
    PhotoMetricTransform,
    RandomRotate,
    ResizeRatioRange,
    ResizeToMultiple,
    RotateTransform,
    build_test_augmentations,
    build_train_augmentations,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
