from . import backbone, heads, meta_arch, necks  # noqa: F401  (registration)
from .test_time_augmentation import SemanticSegmentorWithTTA  # noqa: F401
