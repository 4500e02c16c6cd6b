from .build import build_evaluator  # noqa: F401
from .sem_seg_evaluator import SemSegEvaluator, segmentation_metrics  # noqa: F401
