"""The occlusion-aware face dataset (2 classes) as mmseg's ``occlude_face.py`` reads it.

mmseg 0.30's ``FaceOccludedDataset`` (``deeplabv3plus_r101_512x512_C-CM+C-WO-NatOcc-SOT``) under
``occlusion-aware-face-dataset/``: ``<set>/img/<stem>.jpg`` with ``<set>/mask/<stem>.png``
(0 = background, 1 = face; 255 would be ignored), the stems listed by a split file that mmseg
joins to the data root:

- training: ``NatOcc_hand_sot``, ``NatOcc_object`` and ``RandOcc``, made by the authors'
  generator (github.com/kennyvoo/face-occlusion-generation) from the same CelebAMask-HQ faces,
  ALL THREE selected by the one ``train.txt`` at the root (mmseg concatenates them; so does
  Detectron2 given the three names in DATASETS.TRAIN);
- validation: ``RealOcc/image`` with ``RealOcc/mask``, split ``RealOcc/split/val.txt``.

Registered as ``occlusion_face_{natocc_hand_sot,natocc_object,randocc}_sem_seg_train`` and
``occlusion_face_realocc_sem_seg_val``; ``tools/datasets/occlusion_face.py`` checks a tree.
"""
import os

from ._common import datasets_root, require_paths
from .folder import register_sem_seg_folder

__all__ = ["OCCLUSION_FACE_CLASSES", "OCCLUSION_FACE_COLORS", "OCCLUSION_FACE_SETS",
           "register_occlusion_face"]

FOLDER = "occlusion-aware-face-dataset"
HINT = ("Generate NatOcc_hand_sot, NatOcc_object and RandOcc with "
        "github.com/kennyvoo/face-occlusion-generation, add RealOcc and train.txt, and check the "
        "tree with: python tools/datasets/occlusion_face.py {base} (see docs/datasets.md).")

# mmseg's FaceOccludedDataset.CLASSES / PALETTE
OCCLUSION_FACE_CLASSES = ["background", "face"]
OCCLUSION_FACE_COLORS = [[0, 0, 0], [128, 0, 0]]
# registered name -> (img_dir, ann_dir, split), relative to the data root: mmseg's occlude_face.py
OCCLUSION_FACE_SETS = {
    "occlusion_face_natocc_hand_sot_sem_seg_train": (
        "NatOcc_hand_sot/img", "NatOcc_hand_sot/mask", "train.txt"),
    "occlusion_face_natocc_object_sem_seg_train": (
        "NatOcc_object/img", "NatOcc_object/mask", "train.txt"),
    "occlusion_face_randocc_sem_seg_train": ("RandOcc/img", "RandOcc/mask", "train.txt"),
    "occlusion_face_realocc_sem_seg_val": ("RealOcc/image", "RealOcc/mask",
                                           "RealOcc/split/val.txt"),
}


def register_occlusion_face(root: str) -> None:
    """Registers OCCLUSION_FACE_SETS under ``root/occlusion-aware-face-dataset``."""
    base = os.path.join(root, FOLDER)
    for name, (img_dir, ann_dir, split) in OCCLUSION_FACE_SETS.items():
        image_root, gt_root = os.path.join(base, img_dir), os.path.join(base, ann_dir)
        split_file = os.path.join(base, split)
        register_sem_seg_folder(
            name, image_root, gt_root, OCCLUSION_FACE_CLASSES, colors=OCCLUSION_FACE_COLORS,
            image_suffix=".jpg", label_suffix=".png", split_file=split_file,
            prepare=require_paths(name, [image_root, gt_root, split_file], HINT.format(base=base)),
        )


register_occlusion_face(datasets_root())
