"""Built-in registrations of the public datasets, on miniature trees in their exact layouts."""
import os

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

import d2seg  # noqa: F401
from d2seg.data.datasets import cityscapes, dataset_metadata
from d2seg.data.mappers import SemSegDatasetMapper

import common
import dataset_trees as trees


def mapper(num_classes, *opts, dataset=None):
    cfg = common.tiny_cfg(num_classes=num_classes, opts=["INPUT.TEST_IMG_SCALE", [], *opts])
    return SemSegDatasetMapper(cfg, is_train=False, dataset_names=[dataset] if dataset else None)


def check_metadata(name, n, evaluator_type="sem_seg", reduce=False):
    meta = dataset_metadata(name)  # d2seg's view: Detectron2's names completed, not changed
    assert len(meta.stuff_classes) == len(meta.stuff_colors) == n
    assert all(len(c) == 3 for c in meta.stuff_colors)
    assert meta.ignore_label == 255 and meta.evaluator_type == evaluator_type
    assert meta.reduce_zero_label is reduce
    return meta


# ---- Cityscapes ------------------------------------------------------------------------------
def test_cityscapes_is_detectron2s_registration_completed(tmp_path):
    trees.make_cityscapes(tmp_path)
    with trees.registered_under(tmp_path, "cityscapes"):
        meta = check_metadata("cityscapes_fine_sem_seg_val", 19, "cityscapes_sem_seg")
        assert meta.stuff_classes[:3] == ["road", "sidewalk", "building"]
        assert meta.stuff_colors[0] == [128, 64, 128]  # mmseg's / cityscapesscripts' road
        assert os.path.normpath(meta.gt_dir) == os.path.join(str(tmp_path), "cityscapes/gtFine/val")
        dicts = DatasetCatalog.get("cityscapes_fine_sem_seg_val")
        assert len(dicts) == 2
        for d in dicts:
            assert d["file_name"].endswith("_leftImg8bit.png")
            assert d["sem_seg_file_name"] == d["file_name"].replace("leftImg8bit", "gtFine", 1)\
                .replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
            assert (d["height"], d["width"]) == (16, 32)
        d = sorted(dicts, key=lambda d: d["file_name"])[0]
        label = mapper(19, dataset="cityscapes_fine_sem_seg_val")(d)["sem_seg"].numpy()
        # labelIds road 7, car 26, sky 23, unlabeled 0, parking 9, person 24 -> trainIds
        assert [int(label[0, c]) for c in range(0, 32, 6)][:6] == [0, 13, 10, 255, 255, 11]


def test_cityscapes_label_id_lookup_table():
    ids = np.array([[0, 1, 6, 7, 8, 9, 11, 17, 18, 19, 26, 29, 31, 33, 34, 255]], np.uint8)
    assert cityscapes.label_ids_to_train_ids(ids).tolist() == [
        [255, 255, 255, 0, 1, 255, 2, 5, 255, 6, 13, 255, 16, 18, 255, 255]]
    assert sorted(set(cityscapes.LABEL_ID_TO_TRAIN_ID.values())) == list(range(19))


def test_cityscapes_missing_folder_and_train_ids(tmp_path):
    with trees.registered_under(tmp_path, "cityscapes"):
        with pytest.raises(FileNotFoundError, match=r"image folder .*leftImg8bit/val"):
            DatasetCatalog.get("cityscapes_fine_sem_seg_val")
    trees.make_cityscapes(tmp_path, splits=(("val", 2),), train_ids=False)
    with trees.registered_under(tmp_path, "cityscapes"):
        with pytest.raises(FileNotFoundError, match=r"labelTrainIds.*tools/datasets/cityscapes.py"):
            DatasetCatalog.get("cityscapes_fine_sem_seg_val")


# ---- ADE20K ----------------------------------------------------------------------------------
def test_ade20k_raw_with_reduce_zero_label(tmp_path):
    trees.make_ade20k(tmp_path, n_train=3, n_val=2)
    with trees.registered_under(tmp_path, "ade20k"):
        check_metadata("ade20k_sem_seg_raw_train", 150, reduce=True)
        meta = MetadataCatalog.get("ade20k_sem_seg_raw_val")
        assert meta.stuff_classes[:3] == ["wall", "building", "sky"] and meta.stuff_classes[-1] == "flag"
        train, val = (DatasetCatalog.get(f"ade20k_sem_seg_raw_{s}") for s in ("train", "val"))
        assert [os.path.basename(d["file_name"]) for d in train] == [
            "ADE_train_00000001.jpg", "ADE_train_00000002.jpg", "ADE_train_00000003.jpg"]
        assert all(d["sem_seg_file_name"].endswith(
            "annotations/validation/" + os.path.basename(d["file_name"])[:-4] + ".png") for d in val)
        assert all(d["reduce_zero_label"] is True for d in train + val)
        # raw 0 ("other") -> 255, k -> k-1; applied even where INPUT.REDUCE_ZERO_LABEL is False
        for m in (mapper(150), mapper(150, dataset="ade20k_sem_seg_raw_val"),
                  mapper(150, "INPUT.REDUCE_ZERO_LABEL", True)):
            label = m(train[0])["sem_seg"].numpy()
            assert sorted(np.unique(label).tolist()) == [0, 1, 74, 149, 255]
            assert label[0, 0] == 255 and label[0, -1] == 0


def test_detectron2_ade20k_names_keep_their_converted_labels(tmp_path):
    # Detectron2's ade20k_sem_seg_val reads annotations_detectron2 (already shifted): even with
    # the ADE20K configs' INPUT.REDUCE_ZERO_LABEL True, its labels are read as they are.
    meta = check_metadata("ade20k_sem_seg_val", 150, reduce=False)
    assert meta.sem_seg_root.endswith("annotations_detectron2/validation")
    label_file = str(tmp_path / "a.png")
    trees.save_label(label_file, trees.blocks([0, 149, 255]))
    m = mapper(150, "INPUT.REDUCE_ZERO_LABEL", True, dataset="ade20k_sem_seg_val")
    assert m.reduce_zero_label is False
    trees.save_image(str(tmp_path / "a.jpg"))
    label = m({"file_name": str(tmp_path / "a.jpg"), "sem_seg_file_name": label_file})["sem_seg"]
    assert sorted(label.unique().tolist()) == [0, 149, 255]


def test_ade20k_missing_folder(tmp_path):
    with trees.registered_under(tmp_path, "ade20k"):
        with pytest.raises(FileNotFoundError, match=r"ade20k_sem_seg_raw_val.*ADEChallengeData2016/"
                                                    r"images/validation"):
            DatasetCatalog.get("ade20k_sem_seg_raw_val")


# ---- Pascal VOC ------------------------------------------------------------------------------
def test_voc_splits_and_trainaug(tmp_path):
    base = trees.make_voc(tmp_path)
    with trees.registered_under(tmp_path, "voc"):
        for name in ("voc_2012_sem_seg_train", "voc_2012_sem_seg_val", "voc_2012_sem_seg_trainaug"):
            meta = check_metadata(name, 21)
            assert meta.stuff_classes[0] == "background" and meta.stuff_colors[1] == [128, 0, 0]
        stems = lambda ds: [os.path.basename(d["file_name"])[:-4] for d in ds]  # noqa: E731
        train = DatasetCatalog.get("voc_2012_sem_seg_train")
        assert stems(train) == trees.VOC_TRAIN
        assert stems(DatasetCatalog.get("voc_2012_sem_seg_val")) == trees.VOC_VAL
        aug = DatasetCatalog.get("voc_2012_sem_seg_trainaug")
        # mmseg's ConcatDataset: train.txt with SegmentationClass, then aug.txt with ...Aug
        assert stems(aug) == trees.VOC_TRAIN + trees.VOC_AUG
        assert [os.path.basename(os.path.dirname(d["sem_seg_file_name"])) for d in aug] == \
            ["SegmentationClass"] * 2 + ["SegmentationClassAug"] * 2
        # palette PNG: the indices are the ids; 255 (boundary) stays ignore
        label = mapper(21)(train[1])["sem_seg"].numpy()
        assert sorted(np.unique(label).tolist()) == [0, 1, 15, 20, 255]
    os.remove(f"{base}/ImageSets/Segmentation/aug.txt")
    with trees.registered_under(tmp_path, "voc"):
        assert len(DatasetCatalog.get("voc_2012_sem_seg_train")) == 2
        with pytest.raises(FileNotFoundError, match=r"split file .*aug.txt.*tools/datasets/voc_aug.py"):
            DatasetCatalog.get("voc_2012_sem_seg_trainaug")


# ---- Pascal Context --------------------------------------------------------------------------
def test_pascal_context_60_and_59(tmp_path):
    trees.make_pascal_context(tmp_path)
    with trees.registered_under(tmp_path, "pascal_context"):
        meta60 = check_metadata("pascal_context_sem_seg_val", 60)
        meta59 = check_metadata("pascal_context_59_sem_seg_val", 59, reduce=True)
        assert meta60.stuff_classes[0] == "background" and meta60.stuff_classes[1:] == meta59.stuff_classes
        assert meta60.stuff_colors[1:] == meta59.stuff_colors
        d60 = DatasetCatalog.get("pascal_context_sem_seg_train")
        d59 = DatasetCatalog.get("pascal_context_59_sem_seg_train")
        assert [d["file_name"] for d in d60] == [d["file_name"] for d in d59]
        assert [os.path.basename(d["file_name"])[:-4] for d in d60] == trees.CONTEXT_TRAIN
        # labels [0 background, 1, 59, 30]: kept in 60-class, background ignored in 59-class
        l60 = mapper(60)(d60[0])["sem_seg"].numpy()
        l59 = mapper(59)(d59[0])["sem_seg"].numpy()
        assert sorted(np.unique(l60).tolist()) == [0, 1, 30, 59]
        assert sorted(np.unique(l59).tolist()) == [0, 29, 58, 255]
    with trees.registered_under(tmp_path / "empty", "pascal_context"):
        with pytest.raises(FileNotFoundError, match=r"folder .*VOC2010/JPEGImages.*pascal_context.py"):
            DatasetCatalog.get("pascal_context_59_sem_seg_val")
