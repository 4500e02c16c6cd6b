"""LoveDA: tools/datasets/loveda.py on miniature official zips (the same files as mmseg's
converter), the registration, check_dataset and one evaluation pass."""
import os
import sys

import pytest

from detectron2.data import DatasetCatalog

import dataset_trees as trees


def prepare(tmp_path):
    src = trees.make_loveda_download(tmp_path / "zips")
    out = tmp_path / "data" / "loveDA"
    trees.load_tool("loveda").main([src, "-o", str(out)])
    return src, out


def test_layout_equals_mmseg_converter(tmp_path, monkeypatch):
    src, out = prepare(tmp_path)
    conv = trees.load_mmseg_converter("loveda")
    monkeypatch.setattr(sys, "argv", ["loveda", src, "-o", str(tmp_path / "mmseg")])
    conv.main()
    files = trees.assert_same_files(out, tmp_path / "mmseg")
    assert sorted(files) == [
        "ann_dir/train/0.png", "ann_dir/train/1.png", "ann_dir/train/1366.png",
        "ann_dir/val/2522.png", "ann_dir/val/3514.png", "img_dir/test/4191.png", "img_dir/test/5000.png",
        "img_dir/train/0.png", "img_dir/train/1.png", "img_dir/train/1366.png",
        "img_dir/val/2522.png", "img_dir/val/3514.png"]
    with open(out / "ann_dir/train/1366.png", "rb") as a, open(os.path.join(
            tmp_path, "mmseg", "ann_dir/train/1366.png"), "rb") as b:
        assert a.read() == b.read()  # copied unchanged


def test_resume_truncated_and_missing_archives(tmp_path, capsys):
    src, out = prepare(tmp_path)
    tool = trees.load_tool("loveda")
    os.remove(out / ".d2seg_prepared.json")
    os.remove(out / "img_dir/val/3514.png")
    capsys.readouterr()
    tool.main([src, "-o", str(out)])
    assert "keeping 11 existing" in capsys.readouterr().out
    trees.truncate(os.path.join(src, "Val.zip"), 0.7)
    with pytest.raises(SystemExit) as e:
        tool.main([src, "-o", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Val.zip" in err and "download it again" in err
    os.remove(os.path.join(src, "Val.zip"))
    with pytest.raises(SystemExit):
        tool.main([src, "-o", str(tmp_path / "other")])
    assert "Val.zip' does not exist" in capsys.readouterr().err


def test_registration_check_and_evaluation(tmp_path):
    prepare(tmp_path)
    with trees.registered_under(tmp_path / "data", "loveda"):
        trees.check_metadata_equals_mmseg("loveda_sem_seg_train", "LoveDADataset", True)
        assert len(DatasetCatalog.get("loveda_sem_seg_train")) == 3
        code, report = trees.run_check_dataset("loveda_sem_seg_val")
        assert code == 0, report
        res = trees.evaluate_known_confusion("loveda_sem_seg_val")
        assert 0 < res["mIoU"] < 100
