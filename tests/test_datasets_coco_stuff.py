"""COCO-Stuff 10k and 164k: tools/datasets/coco_stuff.py on miniature official downloads (the same
*_labelTrainIds.png as mmseg's converters), the id table (Detectron2's COCO ids), the
registrations, check_dataset and one evaluation pass."""
import os
import re

import numpy as np
import pytest

from detectron2.data import DatasetCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from d2seg.data.datasets import coco_stuff

import dataset_trees as trees

NO_CHECK = ["--no-size-check"]


def mmseg_table(name):
    """mmseg's clsID_to_trID, read from its converter's source."""
    conv = trees.load_mmseg_converter(name)
    return conv.clsID_to_trID


def test_id_tables_equal_mmsegs():
    for version, name in (("10k", "coco_stuff10k"), ("164k", "coco_stuff164k")):
        table = mmseg_table(name)
        ids = np.array(sorted(table), np.uint8)
        np.testing.assert_array_equal(coco_stuff.coco_ids_to_train_ids(ids, version),
                                      [table[i] for i in ids.tolist()])


def test_classes_and_ids_from_detectron2s_coco_metadata():
    things = [c for c in COCO_CATEGORIES if c["isthing"]]  # the 80 ids COCO annotates
    assert coco_stuff.COCO_STUFF_IDS[:80] == [c["id"] for c in things]
    assert coco_stuff.COCO_STUFF_CLASSES[:80] == [c["name"] for c in things]
    assert len(coco_stuff.COCO_STUFF_IDS) == len(coco_stuff.COCO_STUFF_CLASSES) == 171
    lut = coco_stuff.coco_ids_to_train_ids(np.arange(256, dtype=np.uint8), "164k")
    assert lut[[0, 89, 91, 181, 255]].tolist() == [0, 79, 80, 170, 255]  # person, toothbrush,
    # banner (id 92), wood (id 182), unlabelled


def test_10k_equals_mmseg_converter(tmp_path):
    root = trees.make_coco_stuff_10k_download(tmp_path / "coco_stuff10k")
    trees.load_tool("coco_stuff").main(["10k", root, *NO_CHECK])
    conv = trees.load_mmseg_converter("coco_stuff10k")  # its main() insists on 10000 images
    ref = tmp_path / "mmseg"
    for sub in ("train2014", "test2014"):
        os.makedirs(ref / "images" / sub)
        os.makedirs(ref / "annotations" / sub)
    train, test = conv.generate_coco_list(root)
    for pair in train + test:
        conv.convert_to_trainID(pair, os.path.join(root, "images"),
                                os.path.join(root, "annotations"), str(ref / "images"),
                                str(ref / "annotations"), is_train=pair in train)
    labels = trees.assert_same_files(os.path.join(root, "annotations"), ref / "annotations")
    assert sorted(labels) == [f"{s}/{n}_labelTrainIds.png" for s, names in (
        ("test2014", trees.COCO10K_TEST), ("train2014", trees.COCO10K_TRAIN)) for n in names]
    # COCO ids 0 1 12 13 91 92 182 -> 0 (unlabelled), 1, 12 and 91 (unused ids: kept, as
    # mmseg), 12, 81, 171
    label = labels[f"train2014/{trees.COCO10K_TRAIN[0]}_labelTrainIds.png"]
    assert sorted(np.unique(label).tolist()) == [0, 1, 12, 81, 91, 171]
    for sub in ("train2014", "test2014"):  # (images/ also holds the download's flat copies)
        trees.assert_same_files(os.path.join(root, "images", sub), ref / "images" / sub, ".jpg")


def test_164k_equals_mmseg_converter(tmp_path):
    import shutil

    root = trees.make_coco_stuff_164k_download(tmp_path / "coco_stuff164k")
    ref = tmp_path / "mmseg"
    shutil.copytree(root, ref)
    trees.load_tool("coco_stuff").main(["164k", root, *NO_CHECK])
    conv = trees.load_mmseg_converter("coco_stuff164k")
    for sub, is_train in (("train2017", True), ("val2017", False)):
        for f in sorted(os.listdir(ref / "annotations" / sub)):
            conv.convert_to_trainID(str(ref / "annotations" / sub / f), str(ref / "annotations"),
                                    is_train)
    labels = trees.assert_same_files(os.path.join(root, "annotations"), ref / "annotations")
    trees.load_tool("coco_stuff").main(["164k", root, "-o", str(tmp_path / "out"), *NO_CHECK])
    assert sorted(trees.files_under(tmp_path / "out" / "annotations")) == sorted(
        k for k in labels if k.endswith("_labelTrainIds.png"))
    assert len(trees.files_under(tmp_path / "out" / "images", ".jpg")) == 3  # copied, as mmseg
    label = labels["train2017/000000000000_labelTrainIds.png"]
    # id-1 values 0 11 12 91 181 255 -> 0, 11 (an unused id: kept, as mmseg), 11, 80, 170, 255
    assert sorted(np.unique(label).tolist()) == [0, 11, 80, 170, 255]


def test_checks_and_errors(tmp_path, capsys):
    tool = trees.load_tool("coco_stuff")
    root = trees.make_coco_stuff_10k_download(tmp_path / "coco_stuff10k")
    with pytest.raises(SystemExit):  # mmseg's size check
        tool.main(["10k", root])
    assert "COCO-Stuff 10k has 10000" in capsys.readouterr().err
    mat = os.path.join(root, "annotations", trees.COCO10K_TRAIN[1] + ".mat")
    trees.truncate(mat)
    with pytest.raises(SystemExit) as e:
        tool.main(["10k", root, *NO_CHECK])
    err = capsys.readouterr().err
    assert e.value.code == 2 and mat in err and "download it again" in err
    os.remove(mat)
    with pytest.raises(SystemExit):
        tool.main(["10k", root, *NO_CHECK])
    assert "1 listed files are missing" in capsys.readouterr().err
    root = trees.make_coco_stuff_164k_download(tmp_path / "coco_stuff164k")
    png = os.path.join(root, "annotations", "val2017", "000000000100.png")
    trees.truncate(png, 0.6)
    with pytest.raises(SystemExit):
        tool.main(["164k", root, *NO_CHECK])
    assert png in capsys.readouterr().err
    os.remove(os.path.join(root, "images", "val2017", "000000000100.jpg"))
    with pytest.raises(SystemExit):
        tool.main(["164k", root, *NO_CHECK])
    assert "1 annotated images are missing" in capsys.readouterr().err


def test_resume(tmp_path, capsys):
    root = trees.make_coco_stuff_164k_download(tmp_path / "coco_stuff164k")
    tool = trees.load_tool("coco_stuff")
    tool.main(["164k", root, *NO_CHECK])
    capsys.readouterr()
    tool.main(["164k", root, *NO_CHECK])
    assert "already prepared" in capsys.readouterr().out
    os.remove(os.path.join(root, "annotations", ".d2seg_labelTrainIds.json"))
    os.remove(os.path.join(root, "annotations", "val2017", "000000000100_labelTrainIds.png"))
    tool.main(["164k", root, *NO_CHECK])
    text = capsys.readouterr().out
    assert "keeping 2 existing" in text and "wrote 1 files" in text


@pytest.mark.parametrize("version,split,reduce", [("10k", "test", True), ("164k", "val", False)])
def test_registration_check_and_evaluation(tmp_path, version, split, reduce):
    make = getattr(trees, f"make_coco_stuff_{version}_download")
    root = make(tmp_path / "data" / f"coco_stuff{version}")
    trees.load_tool("coco_stuff").main([version, root, *NO_CHECK])
    name = f"coco_stuff_{version}_sem_seg_{split}"
    with trees.registered_under(tmp_path / "data", "coco_stuff"):
        trees.check_metadata_equals_mmseg(name, "COCOStuffDataset", reduce)
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == 1
        assert re.sub(r"_labelTrainIds\.png$", ".jpg", dicts[0]["sem_seg_file_name"]) == \
            dicts[0]["file_name"].replace("images", "annotations")
        code, report = trees.run_check_dataset(name)
        assert code == 0, report
        res = trees.evaluate_known_confusion(name)
        assert 0 < res["mIoU"] < 100
