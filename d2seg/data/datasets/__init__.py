from . import builtin_shapes  # noqa: F401  (registers d2seg_shapes_{train,val})
from . import ade20k, cityscapes, pascal_context, voc  # noqa: F401  (registers the public datasets)
from .folder import load_sem_seg_folder, register_sem_seg_folder

__all__ = ["register_sem_seg_folder", "load_sem_seg_folder"]
