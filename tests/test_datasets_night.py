"""Dark Zurich (val) and Nighttime Driving (test): tools/datasets/{dark_zurich,nighttime_driving}.py
on miniature official archives, the registrations (Cityscapes' classes, as mmseg's
CityscapesDataset subclasses), check_dataset and one evaluation pass."""
import os
import zipfile

import pytest

from detectron2.data import DatasetCatalog

import dataset_trees as trees

SETS = {  # tool, archive maker, registered name, mmseg class, image folder
    "dark_zurich": ("dark_zurich", "dark_zurich_sem_seg_val", "DarkZurichDataset",
                    "rgb_anon/val/night/GOPR0356"),
    "NighttimeDrivingTest": ("nighttime_driving", "nighttime_driving_sem_seg_test",
                             "NightDrivingDataset", "leftImg8bit/test/night"),
}


def prepare(tmp_path, folder):
    tool, *_ = SETS[folder]
    archive = getattr(trees, f"make_{tool}_zip")(tmp_path / f"{tool}.zip")
    out = tmp_path / "data" / folder
    trees.load_tool(tool).main([archive, "-o", str(out)])
    return archive, out


@pytest.mark.parametrize("folder", sorted(SETS))
def test_unpack_register_check_evaluate(tmp_path, folder, capsys):
    tool, name, mmseg_class, images = SETS[folder]
    archive, out = prepare(tmp_path, folder)
    with zipfile.ZipFile(archive) as z:  # every file unpacked unchanged, any top folder dropped
        for member in z.namelist():
            rel = member.split("NighttimeDrivingTest/", 1)[-1]
            with open(out / rel, "rb") as f:
                assert f.read() == z.read(member)
    assert "2 images with labels" in capsys.readouterr().out
    with trees.registered_under(tmp_path / "data", tool):
        trees.check_metadata_equals_mmseg(name, mmseg_class, False)
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == 2 and all(os.path.dirname(d["file_name"]) == str(out / images)
                                       for d in dicts)
        code, report = trees.run_check_dataset(name)
        assert code == 0, report
        res = trees.evaluate_known_confusion(name)
        assert 0 < res["mIoU"] < 100


def test_dark_zurich_missing_label_and_truncated_archive(tmp_path, capsys):
    tool = trees.load_tool("dark_zurich")
    archive, out = prepare(tmp_path, "dark_zurich")
    os.remove(out / "gt/val/night/GOPR0356/GOPR0356_frame_000322_gt_labelTrainIds.png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # a finished unpack: the check still runs
        tool.main([archive, "-o", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "GOPR0356_frame_000322" in err and "without a label" in err
    tool.main([archive, "-o", str(out), "--force"])  # unpacks it again
    trees.truncate(archive)
    with pytest.raises(SystemExit):
        tool.main([archive, "-o", str(tmp_path / "other")])
    assert "dark_zurich.zip: not a readable zip archive" in capsys.readouterr().err


def test_nighttime_driving_wrong_archive(tmp_path, capsys):
    archive = trees.make_dark_zurich_zip(tmp_path / "dz.zip")
    with pytest.raises(SystemExit):
        trees.load_tool("nighttime_driving").main([archive, "-o", str(tmp_path / "out")])
    assert "no files under ['leftImg8bit/'" in capsys.readouterr().err


def test_eval_only_through_train_net(tmp_path):
    """The test sets are used with --eval-only: tools/train_net.py evaluates a (tiny, random)
    Cityscapes-class model on the registered Nighttime Driving tree."""
    from test_datasets_eval_e2e import check_metrics, eval_only

    prepare(tmp_path, "NighttimeDrivingTest")
    with trees.registered_under(tmp_path / "data", "nighttime_driving"):
        res = eval_only(tmp_path, "nighttime_driving_sem_seg_test", 19)
    check_metrics(res, tmp_path, "nighttime_driving_sem_seg_test", 19)
