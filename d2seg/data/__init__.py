from . import datasets  # noqa: F401  (registration)
from .datasets import register_sem_seg_folder
from .mappers import SemSegDatasetMapper

__all__ = ["register_sem_seg_folder", "SemSegDatasetMapper"]
