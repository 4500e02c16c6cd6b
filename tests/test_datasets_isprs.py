"""ISPRS Potsdam and Vaihingen: tools/datasets/isprs.py on miniature official zips (the same tiles
and labels as mmseg's converters), the registrations, check_dataset and one evaluation pass."""
import os
import sys

import numpy as np
import pytest

from detectron2.data import DatasetCatalog

import dataset_trees as trees

CLIP = ["--clip-size", "16", "--stride-size", "8"]


def prepare(tmp_path, kind, capsys=None):
    src = getattr(trees, f"make_{kind}_download")(tmp_path / f"{kind}_zips")
    out = tmp_path / "data" / kind
    trees.load_tool("isprs").main([kind, src, "-o", str(out), *CLIP])
    return src, out


def mmseg_convert(monkeypatch, kind, src, out):
    conv = trees.load_mmseg_converter(kind)
    monkeypatch.setattr(sys, "argv", [kind, src, "-o", str(out), "--clip_size", "16",
                                      "--stride_size", "8"])
    if kind == "vaihingen":  # its clip_big_image reads the global set under __main__
        conv.args = conv.parse_args()
    conv.main()


@pytest.mark.parametrize("kind", ["potsdam", "vaihingen"])
def test_tiles_equal_mmseg_converter(tmp_path, monkeypatch, kind):
    src, out = prepare(tmp_path, kind)
    mmseg_convert(monkeypatch, kind, src, tmp_path / "mmseg")
    files = trees.assert_same_files(out, tmp_path / "mmseg")
    # mmseg's grid on 40 x 56 with tile 16: x0 in 0, 16, 32, 40; y0 in 0, 16, 24
    prefix = "2_10" if kind == "potsdam" else "area1"
    tiles = sorted(f for f in files if f.startswith(f"img_dir/train/{prefix}_"))
    assert len(tiles) == 12 and f"img_dir/train/{prefix}_40_24_56_40.png" in tiles
    assert {os.path.dirname(f) for f in files} == {
        "img_dir/train", "img_dir/val", "ann_dir/train", "ann_dir/val"}
    labels = np.concatenate([v.ravel() for k, v in files.items() if k.startswith("ann_dir")])
    assert set(np.unique(labels)) == set(range(7))  # the unknown colours became 0 or 2


def test_colour_mapping_is_mmsegs():
    isprs = trees.load_tool("isprs")
    colors = np.array([[[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0],
                        [255, 0, 0], [0, 0, 0], [255, 0, 255], [0, 170, 0]]], np.uint8)
    # magenta is no class (0); (0, 170, 0) has blue's 2B + 3G + 4R: mmseg calls it "building"
    assert isprs.colors_to_ids(colors).tolist() == [[1, 2, 3, 4, 5, 6, 0, 0, 2]]


def test_resume_keeps_tiles_and_refuses_nothing_silently(tmp_path, capsys):
    src, out = prepare(tmp_path, "potsdam")
    tool = trees.load_tool("isprs")
    capsys.readouterr()
    tool.main(["potsdam", src, "-o", str(out), *CLIP])
    assert "already prepared" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # other tile settings than the finished run's
        tool.main(["potsdam", src, "-o", str(out)])
    assert "other settings" in capsys.readouterr().err
    # an interrupted run: the marker and a source's last tile are missing -> that source is redone
    os.remove(out / ".d2seg_prepared.json")
    os.remove(out / "ann_dir/val/5_15_40_24_56_40.png")
    tool.main(["potsdam", src, "-o", str(out), *CLIP])
    text = capsys.readouterr().out
    assert "keeping 3 existing" in text and "wrote 1 files" in text
    assert (out / "ann_dir/val/5_15_40_24_56_40.png").is_file()
    assert not [f for f in os.listdir(out / "ann_dir/val") if ".tmp" in f]


def test_truncated_and_missing_archives(tmp_path, capsys):
    src = trees.make_potsdam_download(tmp_path / "zips")
    tool = trees.load_tool("isprs")
    trees.truncate(os.path.join(src, "5_Labels_all_noBoundary.zip"))
    with pytest.raises(SystemExit) as e:
        tool.main(["potsdam", src, "-o", str(tmp_path / "out"), *CLIP])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "5_Labels_all_noBoundary.zip" in err and "download it again" in err
    os.remove(os.path.join(src, "5_Labels_all_noBoundary.zip"))
    with pytest.raises(SystemExit):
        tool.main(["potsdam", src, "-o", str(tmp_path / "out"), *CLIP])
    assert "needs both the image and the label archive" in capsys.readouterr().err


def test_truncated_tif_inside_a_valid_archive(tmp_path, capsys):
    src = tmp_path / "zips"
    good = trees.make_potsdam_download(src)
    tif = trees.image_bytes(trees.rgb(*trees.ISPRS_HW), "TIFF")
    trees.write_zip(os.path.join(good, "2_Ortho_RGB.zip"),
                    {"2_Ortho_RGB/top_potsdam_2_10_RGB.tif": tif[: len(tif) // 2]})
    with pytest.raises(SystemExit):
        trees.load_tool("isprs").main(["potsdam", good, "-o", str(tmp_path / "out"), *CLIP])
    err = capsys.readouterr().err
    assert "top_potsdam_2_10_RGB.tif" in err and "download it again" in err


@pytest.mark.parametrize("kind,mmseg_class", [("potsdam", "PotsdamDataset"),
                                              ("vaihingen", "ISPRSDataset")])
def test_registration_check_and_evaluation(tmp_path, kind, mmseg_class):
    _, out = prepare(tmp_path, kind)
    with trees.registered_under(tmp_path / "data", "isprs"):
        trees.check_metadata_equals_mmseg(f"{kind}_sem_seg_train", mmseg_class, True)
        train, val = (DatasetCatalog.get(f"{kind}_sem_seg_{s}") for s in ("train", "val"))
        assert len(train) == len(val) == 12
        assert all(d["sem_seg_file_name"] == d["file_name"].replace("img_dir", "ann_dir")
                   for d in train + val)
        code, report = trees.run_check_dataset(f"{kind}_sem_seg_val")
        assert code == 0, report
        res = trees.evaluate_known_confusion(f"{kind}_sem_seg_val")
        assert 0 < res["mIoU"] < 100


def test_missing_dataset_names_the_tool(tmp_path):
    with trees.registered_under(tmp_path, "isprs"):
        with pytest.raises(FileNotFoundError, match=r"vaihingen/img_dir/train.*tools/datasets/isprs.py"):
            DatasetCatalog.get("vaihingen_sem_seg_train")
