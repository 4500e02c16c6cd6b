"""mmseg's datasets -> d2seg's registered datasets and mmseg's data layouts."""
from collections import OrderedDict

from .common import TranslationError


def _split(img, ann, split=None):
    return dict(img_dir=img, ann_dir=ann, **({"split": split} if split else {}))


def _dirs(img, ann, train="train", val="val"):
    """<img>/<train>, <ann>/<train> and the same for val (mmseg's convert_datasets layout)."""
    return {"train": _split(f"{img}/{train}", f"{ann}/{train}"),
            "val": _split(f"{img}/{val}", f"{ann}/{val}")}


_VOC_AUG = {"train": _split("JPEGImages", ["SegmentationClass", "SegmentationClassAug"],
                            ["ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/aug.txt"]),
            "val": _split("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/val.txt")}
_CONTEXT = {s: _split("JPEGImages", "SegmentationClassContext",
                      f"ImageSets/SegmentationContext/{s}.txt") for s in ("train", "val")}
_NIGHT = "(Cityscapes models, tested on {})"
# mmseg's occlude_face.py: data.train is a LIST of three sets (mmseg's ConcatDataset), all
# selected by the one train.txt at the data root; no data.test (tested on data.val)
_FACE_TRAIN = ("NatOcc_hand_sot", "NatOcc_object", "RandOcc")
_FACE = {"train": [_split(f"{s}/img", f"{s}/mask", "train.txt") for s in _FACE_TRAIN],
         "val": _split("RealOcc/image", "RealOcc/mask", "RealOcc/split/val.txt")}
# mmseg dataset -> d2seg dataset names and mmseg's data layout (checked); a type with several
# layouts (COCO-Stuff 10k / 164k) is told apart by its train img_dir. Test-only sets (Dark
# Zurich, Nighttime Driving) have no train split: their configs train on Cityscapes.
# key: (mmseg type, title, classes, d2seg train name(s), d2seg test name, layout); a list of
# train names is mmseg's list of train datasets, in its order (Detectron2 concatenates them)
_ROWS = [
    ("cityscapes", "CityscapesDataset", "Cityscapes", 19, "cityscapes_fine_sem_seg_train",
     "cityscapes_fine_sem_seg_val", _dirs("leftImg8bit", "gtFine")),
    ("ade20k", "ADE20KDataset", "ADE20K", 150, "ade20k_sem_seg_raw_train",
     "ade20k_sem_seg_raw_val", _dirs("images", "annotations", "training", "validation")),
    ("voc12aug", "PascalVOCDataset", "Pascal VOC 2012 + Aug", 21, "voc_2012_sem_seg_trainaug",
     "voc_2012_sem_seg_val", _VOC_AUG),
    ("pascal_context", "PascalContextDataset", "Pascal Context", 60,
     "pascal_context_sem_seg_train", "pascal_context_sem_seg_val", _CONTEXT),
    ("pascal_context_59", "PascalContextDataset59", "Pascal Context 59", 59,
     "pascal_context_59_sem_seg_train", "pascal_context_59_sem_seg_val", _CONTEXT),
    ("coco_stuff_10k", "COCOStuffDataset", "COCO-Stuff 10k", 171, "coco_stuff_10k_sem_seg_train",
     "coco_stuff_10k_sem_seg_test", _dirs("images", "annotations", "train2014", "test2014")),
    ("coco_stuff_164k", "COCOStuffDataset", "COCO-Stuff 164k", 171,
     "coco_stuff_164k_sem_seg_train", "coco_stuff_164k_sem_seg_val",
     _dirs("images", "annotations", "train2017", "val2017")),
    ("loveda", "LoveDADataset", "LoveDA", 7, "loveda_sem_seg_train", "loveda_sem_seg_val",
     _dirs("img_dir", "ann_dir")),
    ("potsdam", "PotsdamDataset", "ISPRS Potsdam", 6, "potsdam_sem_seg_train",
     "potsdam_sem_seg_val", _dirs("img_dir", "ann_dir")),
    ("vaihingen", "ISPRSDataset", "ISPRS Vaihingen", 6, "vaihingen_sem_seg_train",
     "vaihingen_sem_seg_val", _dirs("img_dir", "ann_dir")),
    ("isaid", "iSAIDDataset", "iSAID", 16, "isaid_sem_seg_train", "isaid_sem_seg_val",
     _dirs("img_dir", "ann_dir")),
    ("dark_zurich", "DarkZurichDataset", "Dark Zurich " + _NIGHT.format("Dark Zurich val"), 19,
     None, "dark_zurich_sem_seg_val",
     {"val": _split("rgb_anon/val/night/GOPR0356", "gt/val/night/GOPR0356")}),
    ("night_driving", "NightDrivingDataset",
     "Nighttime Driving " + _NIGHT.format("Nighttime Driving test"), 19, None,
     "nighttime_driving_sem_seg_test",
     {"val": _split("leftImg8bit/test/night", "gtCoarse_daytime_trainvaltest/test/night")}),
    ("occlusion_face", "FaceOccludedDataset",
     "Occlusion-aware face (NatOcc hand SOT + NatOcc object + RandOcc, tested on RealOcc)", 2,
     [f"occlusion_face_{s.lower()}_sem_seg_train" for s in _FACE_TRAIN],
     "occlusion_face_realocc_sem_seg_val", _FACE),
]
DATASETS = OrderedDict(
    (key, dict(type=kind, title=title, num_classes=n, train=train, test=test, layout=layout))
    for key, kind, title, n, train, test, layout in _ROWS)


def find_dataset(kind, img_dir, split):
    """The DATASETS key of an mmseg dataset ``type`` whose ``split`` layout has ``img_dir``."""
    keys = [k for k, d in DATASETS.items() if d["type"] == kind and split in d["layout"]]
    if len(keys) > 1:
        keys = [k for k in keys if img_dir in [
            p["img_dir"] for p in _parts(DATASETS[k]["layout"][split])]]
    if len(keys) != 1:
        raise TranslationError(f"dataset {kind!r} (img_dir {img_dir!r}): d2seg has no "
                               "registered dataset for it")
    return keys[0]


def _parts(x):
    """A dataset's train names / layouts as a list (one, or mmseg's list of train sets)."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


