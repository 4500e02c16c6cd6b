"""iSAID: tools/datasets/isaid.py on a miniature official download (the same patches and labels
as mmseg's converter), the registration, check_dataset and one evaluation pass."""
import os
import sys

import pytest
from PIL import Image

from detectron2.data import DatasetCatalog

import dataset_trees as trees

PATCH = ["--patch-width", "16", "--patch-height", "16", "--overlap-area", "6"]


def prepare(tmp_path):
    src = trees.make_isaid_download(tmp_path / "download")
    out = tmp_path / "data" / "iSAID"
    trees.load_tool("isaid").main([src, "-o", str(out), *PATCH])
    return src, out


class PillowAsMmsegExpects:
    """mmseg's converter saves label patches as ``Image.fromarray(a, mode='P')`` without a
    palette; the Pillow here (13) writes such an image with 1 bit per pixel, so every class but
    0 becomes 1. The Pillow of mmseg 0.30's time kept the 8-bit indices: this shim does that."""

    def __getattr__(self, name):
        return getattr(Image, name)

    @staticmethod
    def fromarray(array, mode=None):
        return Image.fromarray(array)


def test_patches_equal_mmseg_converter(tmp_path, monkeypatch):
    src, out = prepare(tmp_path)
    conv = trees.load_mmseg_converter("isaid")
    monkeypatch.setattr(conv, "Image", PillowAsMmsegExpects())
    monkeypatch.setattr(sys, "argv", ["isaid", src, "-o", str(tmp_path / "mmseg"),
                                      "--patch_width", "16", "--patch_height", "16",
                                      "--overlap_area", "6"])
    conv.main()
    files = trees.assert_same_files(out, tmp_path / "mmseg")
    # P0000 is 20 x 30: windows x0 in 0, 10, 14 and y0 in 0, 4; P0001 (10 x 12) padded to 16 x 16
    assert sorted(f for f in files if "P0000" in f and f.startswith("img_dir")) == sorted(
        f"img_dir/train/P0000_{y}_{y + 16}_{x}_{x + 16}.png" for x in (0, 10, 14) for y in (0, 4))
    padded = files["ann_dir/train/P0001_0_16_0_16_instance_color_RGB.png"]
    assert padded.shape == (16, 16) and (padded[10:] == 255).all() and (padded[:, 12:] == 255).all()
    assert files["img_dir/test/P0003.png"].shape == (12, 12, 3)  # test images: unchanged
    assert 16 not in set(files["ann_dir/train/P0000_0_16_0_16_instance_color_RGB.png"].ravel())


def test_resume_and_finished_run(tmp_path, capsys):
    src, out = prepare(tmp_path)
    tool = trees.load_tool("isaid")
    capsys.readouterr()
    tool.main([src, "-o", str(out), *PATCH])
    assert "already prepared" in capsys.readouterr().out
    os.remove(out / ".d2seg_prepared.json")
    os.remove(out / "img_dir/train/P0000_4_20_14_30.png")  # P0000's last patch
    tool.main([src, "-o", str(out), *PATCH])
    text = capsys.readouterr().out
    assert "keeping 6 existing" in text and "wrote 1 files" in text


def test_truncated_image_and_missing_masks(tmp_path, capsys):
    src = trees.make_isaid_download(tmp_path / "download")
    png = trees.image_bytes(trees.rgb(20, 30))
    trees.write_zip(os.path.join(src, "train/images/part1.zip"),
                    {"images/P0000.png": png[: len(png) // 2],
                     "images/P0001.png": trees.image_bytes(trees.rgb(10, 12))})
    tool = trees.load_tool("isaid")
    with pytest.raises(SystemExit) as e:
        tool.main([src, "-o", str(tmp_path / "out"), *PATCH])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "images/P0000.png" in err and "download it again" in err
    os.remove(os.path.join(src, "val/Semantic_masks/images.zip"))
    with pytest.raises(SystemExit):
        tool.main([src, "-o", str(tmp_path / "out"), *PATCH])
    assert "val/Semantic_masks/*.zip" in capsys.readouterr().err


def test_registration_check_and_evaluation(tmp_path):
    prepare(tmp_path)
    with trees.registered_under(tmp_path / "data", "isaid"):
        trees.check_metadata_equals_mmseg("isaid_sem_seg_train", "iSAIDDataset", False)
        train = DatasetCatalog.get("isaid_sem_seg_train")
        assert len(train) == 7  # P0000: 6 patches, P0001: 1 (padded)
        assert all(d["sem_seg_file_name"] == d["file_name"].replace("img_dir", "ann_dir")
                   .replace(".png", "_instance_color_RGB.png") for d in train)
        code, report = trees.run_check_dataset("isaid_sem_seg_train")
        assert code == 0, report
        res = trees.evaluate_known_confusion("isaid_sem_seg_train")
        assert 0 < res["mIoU"] < 100
