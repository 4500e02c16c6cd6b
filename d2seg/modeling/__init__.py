from . import backbone, heads, meta_arch  # noqa: F401  (registration)
from .test_time_augmentation import SemanticSegmentorWithTTA  # noqa: F401
