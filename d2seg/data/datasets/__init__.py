from . import builtin_shapes  # noqa: F401  (registers d2seg_shapes_{train,val})
from . import ade20k, camvid, cityscapes, pascal_context, voc  # noqa: F401  (registers the public datasets)
from . import coco_stuff, dark_zurich, isaid, isprs, loveda, nighttime_driving  # noqa: F401  (mmseg's other sets)
from . import occlusion_face  # noqa: F401  (mmseg's FaceOccludedDataset)
from .detectron2_builtin import dataset_metadata
from .folder import load_sem_seg_folder, register_sem_seg_folder

__all__ = ["register_sem_seg_folder", "load_sem_seg_folder", "dataset_metadata"]
