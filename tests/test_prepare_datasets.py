"""tools/datasets/*: the preparation tools on miniature raw datasets; idempotent, resumable,
never silently overwriting a finished run; their output registers."""
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog

from d2seg.data.datasets.cityscapes import label_ids_to_train_ids

import dataset_trees as trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name):
    spec = importlib.util.spec_from_file_location(
        f"prep_{name}", os.path.join(REPO, "tools", "datasets", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path):
    return np.asarray(Image.open(path))


def mtimes(paths):
    return {p: os.stat(p).st_mtime_ns for p in paths}


# ---- Cityscapes ------------------------------------------------------------------------------
def test_cityscapes_lut_idempotent_and_force(tmp_path, capsys):
    root = trees.make_cityscapes(tmp_path, train_ids=False)
    cs = tool("cityscapes")
    cs.main([root, "--method", "lut"])
    outs = sorted(glob.glob(f"{root}/gtFine/*/*/*_labelTrainIds.png"))
    assert len(outs) == 4
    for out in outs:
        ids = read(out.replace("labelTrainIds", "labelIds"))
        np.testing.assert_array_equal(read(out), label_ids_to_train_ids(ids))
    before = mtimes(outs)
    capsys.readouterr()
    cs.main([root, "--method", "lut"])  # a finished run: nothing is touched
    assert "already prepared" in capsys.readouterr().out and mtimes(outs) == before
    # an interrupted run (no marker, one output missing) resumes, keeping the rest
    os.remove(f"{root}/gtFine/.d2seg_labelTrainIds.json")
    os.remove(outs[0])
    cs.main([root, "--method", "lut"])
    out = capsys.readouterr().out
    assert "keeping 3 existing" in out and "wrote 1 files" in out and os.path.isfile(outs[0])
    cs.main([root, "--method", "lut", "--force"])
    assert "wrote 4 files" in capsys.readouterr().out
    with trees.registered_under(tmp_path, "cityscapes"):
        assert len(DatasetCatalog.get("cityscapes_fine_sem_seg_train")) == 2


def test_cityscapes_polygons_equal_lut(tmp_path):
    pytest.importorskip("cityscapesscripts")
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    root = tmp_path / "cityscapes"
    gt = root / "gtFine" / "val" / "aachen"
    gt.mkdir(parents=True)
    objects = [  # overlapping polygons, drawn in order; "parking" and "ego vehicle" are ignored
        {"label": "road", "polygon": [[0, 8], [31, 8], [31, 15], [0, 15]]},
        {"label": "sky", "polygon": [[0, 0], [31, 0], [31, 7], [0, 7]]},
        {"label": "car", "polygon": [[4, 4], [14, 4], [14, 12], [4, 12]]},
        {"label": "parking", "polygon": [[20, 9], [28, 9], [28, 14]]},
        {"label": "cargroup", "polygon": [[16, 2], [22, 2], [22, 6]]},
        {"label": "ego vehicle", "polygon": [[0, 14], [31, 14], [31, 15], [0, 15]]},
    ]
    poly = gt / "aachen_000000_000019_gtFine_polygons.json"
    poly.write_text(json.dumps({"imgHeight": 16, "imgWidth": 32, "objects": objects}))
    json2labelImg(str(poly), str(gt / "aachen_000000_000019_gtFine_labelIds.png"), "ids")
    other = tmp_path / "copy"
    shutil.copytree(root, other)
    cs = tool("cityscapes")
    cs.main([str(root), "--method", "polygons"])
    cs.main([str(other), "--method", "lut"])
    name = "val/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    a, b = read(root / "gtFine" / name), read(other / "gtFine" / name)
    assert sorted(np.unique(a).tolist()) == [0, 10, 13, 255]
    np.testing.assert_array_equal(a, b)


def test_cityscapes_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tool("cityscapes").main([str(tmp_path / "cityscapes")])
    assert e.value.code == 2 and "gtFine" in capsys.readouterr().err


# ---- VOC aug ---------------------------------------------------------------------------------
def make_sbd(root, train, val):
    from scipy.io import savemat

    cls = root / "dataset" / "cls"
    cls.mkdir(parents=True)
    for i, stem in enumerate(train + val):
        seg = trees.blocks([0, 1 + i, 20])
        savemat(str(cls / f"{stem}.mat"),
                {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1), "CategoriesPresent": [1]}})
    trees.write_lines(str(root / "dataset" / "train.txt"), train)
    trees.write_lines(str(root / "dataset" / "val.txt"), val)
    return str(root)


def test_voc_aug(tmp_path, capsys):
    trees.make_voc(tmp_path / "data", aug=False)
    devkit = str(tmp_path / "data" / "VOCdevkit")
    # SBD holds VOC train images, a VOC val image (excluded) and new ones
    sbd = make_sbd(tmp_path / "sbd", ["2007_000032", "2008_000002"], ["2007_000033", "2008_000003"])
    va = tool("voc_aug")
    with pytest.raises(SystemExit):  # mmseg's check: the standard lists have 10582 images
        va.main([devkit, sbd])
    assert "10582" in capsys.readouterr().err
    va.main([devkit, sbd, "--no-size-check"])
    sets = tmp_path / "data/VOCdevkit/VOC2012/ImageSets/Segmentation"
    assert (sets / "aug.txt").read_text().split() == ["2008_000002", "2008_000003"]
    assert (sets / "trainaug.txt").read_text().split() == [
        "2007_000032", "2007_000039", "2008_000002", "2008_000003"]
    aug_dir = tmp_path / "data/VOCdevkit/VOC2012/SegmentationClassAug"
    assert sorted(os.listdir(aug_dir)) == [".d2seg_prepared.json", "2007_000032.png",
                                           "2007_000033.png", "2008_000002.png", "2008_000003.png"]
    np.testing.assert_array_equal(read(aug_dir / "2008_000002.png"), trees.blocks([0, 2, 20]))
    capsys.readouterr()
    va.main([devkit, sbd, "--no-size-check"])
    assert "already prepared" in capsys.readouterr().out
    with trees.registered_under(tmp_path / "data", "voc"):
        assert len(DatasetCatalog.get("voc_2012_sem_seg_trainaug")) == 4


# ---- Pascal Context --------------------------------------------------------------------------
def rle(mask):
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def make_detail_json(path, h=trees.H, w=trees.W):
    images, anns = [], []
    full = np.ones((h, w), bool)
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    for i, (stem, phase) in enumerate([("2008_000002", "train"), ("2008_000003", "train"),
                                       ("2008_000007", "val"), ("2009_000001", "test")]):
        images.append({"image_id": i, "file_name": stem + ".jpg", "height": h, "width": w,
                       "phase": phase})
        # full-set ids: 2 = aeroplane (class 1), 458 = wood (59); the later paints over
        anns.append({"id": 2 * i, "image_id": i, "category_id": 458, "segmentation": rle(full)})
        anns.append({"id": 2 * i + 1, "image_id": i, "category_id": 2, "segmentation": rle(left)})
    with open(path, "w") as f:
        json.dump({"images": images, "annos_segmentation": anns, "categories": []}, f)


def test_pascal_context_from_json(tmp_path, capsys):
    trees.make_pascal_context(tmp_path / "data")
    base = tmp_path / "data/VOCdevkit/VOC2010"
    shutil.rmtree(base / "SegmentationClassContext")
    shutil.rmtree(base / "ImageSets")
    make_detail_json(tmp_path / "trainval_merged.json")
    pc = tool("pascal_context")
    pc.main([str(tmp_path / "data/VOCdevkit"), "--json", str(tmp_path / "trainval_merged.json")])
    label = read(base / "SegmentationClassContext" / "2008_000002.png")
    assert label.dtype == np.uint8 and (label[:, :12] == 1).all() and (label[:, 12:] == 59).all()
    sets = base / "ImageSets/SegmentationContext"
    assert (sets / "train.txt").read_text().split() == ["2008_000002", "2008_000003"]
    assert (sets / "val.txt").read_text().split() == ["2008_000007"]
    assert not (base / "SegmentationClassContext" / "2009_000001.png").exists()  # test phase
    (base / "JPEGImages" / "2008_000008.jpg").unlink()  # (made by make_pascal_context, unlisted)
    with trees.registered_under(tmp_path / "data", "pascal_context"):
        assert len(DatasetCatalog.get("pascal_context_59_sem_seg_train")) == 2
        assert len(DatasetCatalog.get("pascal_context_sem_seg_val")) == 1
    capsys.readouterr()
    pc.main([str(tmp_path / "data/VOCdevkit"), "--json", str(tmp_path / "trainval_merged.json")])
    assert "already prepared" in capsys.readouterr().out


def test_pascal_context_unknown_category_is_an_error(tmp_path):
    pc = tool("pascal_context")
    with pytest.raises(ValueError, match=r"category ids \[3\]"):
        pc.class_to_index(np.array([[0, 2, 3]]), "x.jpg")
    assert pc.class_to_index(np.array([[0, 2, 9, 115, 458]]), "x").tolist() == [[0, 1, 2, 24, 59]]
    assert len(set(pc.MAPPING.tolist())) == 60


def test_pascal_context_from_mat(tmp_path):
    from scipy.io import savemat

    trees.make_pascal_context(tmp_path / "data")
    base = tmp_path / "data/VOCdevkit/VOC2010"
    shutil.rmtree(base / "SegmentationClassContext")
    shutil.rmtree(base / "ImageSets")
    trees.write_lines(str(base / "ImageSets/Main/train.txt"), trees.CONTEXT_TRAIN)
    trees.write_lines(str(base / "ImageSets/Main/val.txt"), trees.CONTEXT_VAL)
    mats = tmp_path / "trainval"
    mats.mkdir()
    for stem in trees.CONTEXT_TRAIN + trees.CONTEXT_VAL:
        savemat(str(mats / f"{stem}.mat"), {"LabelMap": trees.blocks([2, 458, 3, 0], dtype=np.uint16)})
    tool("pascal_context").main([str(tmp_path / "data/VOCdevkit"), "--mat-dir", str(mats)])
    label = read(base / "SegmentationClassContext" / "2008_000007.png")
    assert [int(label[0, c]) for c in (0, 6, 12, 18)] == [1, 59, 0, 0]  # 3: not among the 59
    with trees.registered_under(tmp_path / "data", "pascal_context"):
        assert len(DatasetCatalog.get("pascal_context_sem_seg_val")) == 2


def test_tools_run_as_scripts(tmp_path):
    for name in ("cityscapes", "voc_aug", "pascal_context", "occlusion_face"):
        proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "datasets", f"{name}.py"),
                               "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "--force" in proc.stdout, proc.stderr
