"""tools/check_dataset.py: reports and the hint for each classic mistake; exit code 1 on
problems."""
import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from d2seg.data import register_sem_seg_folder

import dataset_trees as trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("check_dataset", os.path.join(REPO, "tools", "check_dataset.py"))
check_dataset = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_dataset)


def folder(tmp_path, labels, mode=None, image_sizes=None, suffix=".png"):
    """img/<i>.jpg + gt/<i><suffix> for each label array."""
    for i, label in enumerate(labels):
        h, w = (image_sizes or {}).get(i, label.shape[:2])
        trees.save_image(str(tmp_path / "img" / f"{i}.jpg"), h, w, seed=i)
        os.makedirs(tmp_path / "gt", exist_ok=True)
        img = Image.fromarray(np.asarray(label, np.uint8))
        if mode == "P":
            img = img.convert("P")
        img.save(tmp_path / "gt" / f"{i}{suffix}")
    return ["--image-root", str(tmp_path / "img"), "--gt-root", str(tmp_path / "gt")]


def run(capsys, *argv):
    code = check_dataset.main([str(a) for a in argv])
    return code, capsys.readouterr().out


def test_clean_dataset_with_class_table(tmp_path, capsys):
    args = folder(tmp_path, [trees.blocks([0, 1, 2, 255]), trees.blocks([2, 1])])
    code, out = run(capsys, *args, "--num-classes", 3, "--classes", "sky,road,car")
    assert code == 0 and "OK: no problems found" in out
    lines = {ln.split()[1]: ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()}
    # 16 x 24 labels: stripes of 6 columns (4 values) / 12 columns (2 values)
    assert lines["sky"][2] == "96" and lines["road"][2] == str(96 + 192) and lines["car"][4] == "2"
    assert "(ignored)" in out


def test_binary_0_255_masks(tmp_path, capsys):
    args = folder(tmp_path, [trees.blocks([0, 255]), trees.blocks([255, 0, 0])])
    code, out = run(capsys, *args, "--num-classes", 2)
    assert code == 1 and "0/255 binary masks" in out and "label // 255" in out


def test_cityscapes_label_ids(tmp_path, capsys):
    args = folder(tmp_path, [trees.blocks(trees.CITYSCAPES_IDS), trees.blocks([7, 8, 11, 21])])
    code, out = run(capsys, *args, "--num-classes", 19)
    assert code == 1 and "Cityscapes labelIds" in out and "tools/datasets/cityscapes.py" in out
    # the file names alone give it away too
    args = folder(tmp_path / "named", [trees.blocks([0, 1])], suffix="_gtFine_labelIds.png")
    code, out = run(capsys, *args, "--num-classes", 19, "--label-suffix", "_gtFine_labelIds.png")
    assert code == 1 and "Cityscapes labelIds" in out


def test_num_classes_too_small_and_too_large(tmp_path, capsys):
    args = folder(tmp_path, [trees.blocks([0, 1, 7])])
    code, out = run(capsys, *args, "--num-classes", 5)
    assert code == 1 and "NUM_CLASSES=5 disagrees" in out and "at least 8" in out
    code, out = run(capsys, *args, "--num-classes", 20)
    assert code == 0 and "classes 8..19 never appear" in out and "too large" in out


def test_one_based_ids_and_ade20k_raw(tmp_path, capsys):
    args = folder(tmp_path / "a", [trees.blocks([1, 2, 3])])
    code, out = run(capsys, *args, "--num-classes", 3)
    assert code == 1 and "1-based" in out and "reduce_zero_label" in out
    code, out = run(capsys, *args, "--num-classes", 3, "--reduce-zero-label")
    assert code == 0
    args = folder(tmp_path / "b", [trees.blocks([0, 1, 150])])  # ADE20K raw, read as is
    code, out = run(capsys, *args, "--num-classes", 150)
    assert code == 1 and "0 -> ignore, k -> k-1" in out


def test_rgb_and_palette_labels(tmp_path, capsys):
    colour = np.zeros((16, 24, 3), np.uint8)
    colour[:, :12] = (128, 64, 128)
    args = folder(tmp_path / "rgb", [colour])
    code, out = run(capsys, *args, "--num-classes", 3)
    assert code == 1 and "colour (RGB/RGBA) images" in out
    grey = np.repeat(trees.blocks([0, 1])[..., None], 3, axis=2)
    args = folder(tmp_path / "grey", [grey])
    code, out = run(capsys, *args, "--num-classes", 3)
    assert code == 1 and "three equal channels" in out
    args = folder(tmp_path / "pal", [trees.blocks([0, 1, 2])], mode="P")
    code, out = run(capsys, *args, "--num-classes", 3)
    assert code == 0 and "palette ('P') PNGs" in out  # a warning: indices are ids (VOC)


def test_unpaired_mismatched_and_corrupt_files(tmp_path, capsys):
    args = folder(tmp_path, [trees.blocks([0, 1]), trees.blocks([1, 0]), trees.blocks([0])],
                  image_sizes={1: (8, 8)})
    os.remove(tmp_path / "gt" / "0.png")
    trees.save_label(str(tmp_path / "gt" / "orphan.png"), trees.blocks([0]))
    (tmp_path / "img" / "2.jpg").write_bytes(b"not a jpeg")
    code, out = run(capsys, *args, "--num-classes", 2)
    assert code == 1
    assert "1 image(s) without a label" in out and "img/0.jpg" in out
    assert "1 label(s) without an image" in out and "orphan.png" in out
    assert "size differs" in out and "16x24, its image" in out
    assert "unreadable/corrupt" in out and "2.jpg" in out


def test_registered_dataset(tmp_path, capsys):
    trees.make_ade20k(tmp_path)
    with trees.registered_under(tmp_path, "ade20k"):
        code, out = run(capsys, "ade20k_sem_seg_raw_val")
        assert code == 0 and "reduce_zero_label=True" in out and "wall" in out
        code, out = run(capsys, "ade20k_sem_seg_raw_val", "--num-classes", 151)
        assert code == 1 and "NUM_CLASSES=151 disagrees with ade20k_sem_seg_raw_val's 150" in out
    args = folder(tmp_path / "f", [trees.blocks([0, 1])])
    register_sem_seg_folder("test_check_dataset_folder", args[1], args[3], ["a", "b"])
    code, out = run(capsys, "test_check_dataset_folder")
    assert code == 0
    with pytest.raises(SystemExit, match="no dataset named 'nope'"):
        check_dataset.main(["nope"])
