"""register_sem_seg_folder and the generated d2seg_shapes dataset."""
import hashlib
import os
import threading

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

import d2seg  # noqa: F401  (registers d2seg_shapes)
from d2seg.data import register_sem_seg_folder
from d2seg.data.datasets import builtin_shapes as shapes
from d2seg.data.datasets.folder import load_sem_seg_folder
from d2seg.data.mappers import SemSegDatasetMapper

import common

SMALL = {"train": 6, "val": 2}


def make_folder(root, stems, label_stems=None, image_suffix=".jpg", label_suffix=".png"):
    img_dir, gt_dir = root / "img", root / "gt"
    for stem in stems:
        (img_dir / stem).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img_dir / f"{stem}{image_suffix}")
    for stem in stems if label_stems is None else label_stems:
        (gt_dir / stem).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(gt_dir / f"{stem}{label_suffix}")
    return str(img_dir), str(gt_dir)


def unique_name(request):
    return f"test_{request.node.name}_{os.getpid()}"


# ---- register_sem_seg_folder -----------------------------------------------------------------
def test_register_folder(tmp_path, request):
    img_dir, gt_dir = make_folder(tmp_path, ["b", "a", "city/c"])
    name = unique_name(request)
    register_sem_seg_folder(name, img_dir, gt_dir, ["x", "y"], reduce_zero_label=True)
    dicts = DatasetCatalog.get(name)
    assert [os.path.relpath(d["file_name"], img_dir) for d in dicts] == [
        "a.jpg", "b.jpg", "city/c.jpg"]
    assert [os.path.relpath(d["sem_seg_file_name"], gt_dir) for d in dicts] == [
        "a.png", "b.png", "city/c.png"]
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == ["x", "y"] and len(meta.stuff_colors) == 2
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert meta.reduce_zero_label is True
    assert (meta.image_root, meta.sem_seg_root) == (img_dir, gt_dir)


def test_register_is_lazy_and_missing_folder_is_named(tmp_path, request):
    name = unique_name(request)
    register_sem_seg_folder(name, str(tmp_path / "nope"), str(tmp_path), ["x"])  # no error yet
    with pytest.raises(FileNotFoundError, match=r"image folder .*nope"):
        DatasetCatalog.get(name)
    img_dir, _ = make_folder(tmp_path, ["a"])
    with pytest.raises(FileNotFoundError, match=r"label folder .*missing_gt"):
        load_sem_seg_folder(img_dir, str(tmp_path / "missing_gt"))


def test_unpaired_files(tmp_path):
    img_dir, gt_dir = make_folder(tmp_path, ["a", "b", "c"], label_stems=["a", "z"])
    with pytest.raises(ValueError) as e:
        load_sem_seg_folder(img_dir, gt_dir)
    msg = str(e.value)
    assert "2 image(s) without a label: b, c" in msg and "1 label(s) without an image: z" in msg


def test_split_file(tmp_path):
    img_dir, gt_dir = make_folder(tmp_path, ["a", "b", "c"], label_stems=["a", "b"])
    split = tmp_path / "train.txt"
    split.write_text("b\na\n\n")
    dicts = load_sem_seg_folder(img_dir, gt_dir, split_file=str(split))
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["a.jpg", "b.jpg"]
    split.write_text("a\nc\nq\n")
    with pytest.raises(ValueError, match=r"1 without an image .*: q\n.*2 without a label .*: c, q"):
        load_sem_seg_folder(img_dir, gt_dir, split_file=str(split))
    with pytest.raises(FileNotFoundError, match="split file .*nope.txt"):
        load_sem_seg_folder(img_dir, gt_dir, split_file=str(tmp_path / "nope.txt"))


def test_wrong_suffix_hint(tmp_path):
    img_dir, gt_dir = make_folder(tmp_path, ["a"], image_suffix=".png")
    with pytest.raises(ValueError, match=r"no '\*\.jpg' images .*found extensions: \['\.png'\]"):
        load_sem_seg_folder(img_dir, gt_dir)
    assert len(load_sem_seg_folder(img_dir, gt_dir, image_suffix=".png")) == 1


# ---- d2seg_shapes ----------------------------------------------------------------------------
def tree_digest(path):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        for f in sorted(filenames):
            h.update(os.path.relpath(os.path.join(dirpath, f), path).encode())
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_shapes_registered():
    for split in ("train", "val"):
        name = f"d2seg_shapes_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == shapes.SHAPES_CLASSES and meta.ignore_label == 255
        assert meta.image_root.endswith(os.path.join("d2seg_shapes", "images", split))


def test_shapes_deterministic(tmp_path):
    a = shapes.prepare_shapes_dataset(str(tmp_path / "a"), seed=3, splits=SMALL)
    b = shapes.prepare_shapes_dataset(str(tmp_path / "b"), seed=3, splits=SMALL)
    c = shapes.prepare_shapes_dataset(str(tmp_path / "c"), seed=4, splits=SMALL)
    assert tree_digest(a) == tree_digest(b) != tree_digest(c)
    # sample i does not depend on how many are generated
    d = shapes.prepare_shapes_dataset(str(tmp_path / "d"), seed=3, splits={"train": 2})
    for f in ("images/train/0001.jpg", "annotations/train/0001.png"):
        assert open(os.path.join(a, f), "rb").read() == open(os.path.join(d, f), "rb").read()
    # a second call reuses the tree
    mtime = os.path.getmtime(a)
    assert shapes.prepare_shapes_dataset(str(tmp_path / "a"), seed=3, splits=SMALL) == a
    assert os.path.getmtime(a) == mtime


def test_shapes_content(tmp_path):
    root = shapes.prepare_shapes_dataset(str(tmp_path), splits={"train": 12})
    dicts = load_sem_seg_folder(os.path.join(root, "images/train"),
                                os.path.join(root, "annotations/train"))
    assert len(dicts) == 12
    seen = set()
    for d in dicts:
        img, label = Image.open(d["file_name"]), np.array(Image.open(d["sem_seg_file_name"]))
        assert img.mode == "RGB" and img.size[::-1] == label.shape
        assert 96 <= label.shape[0] <= 160 and 96 <= label.shape[1] <= 160
        seen |= set(np.unique(label).tolist())
    assert seen <= set(range(len(shapes.SHAPES_CLASSES))) | {255}
    assert {0, 1, 2, 255} <= seen
    cfg = common.get_d2seg_cfg(common.REPO_CONFIGS / "_base_/Base-Segmentation.yaml", [
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", len(shapes.SHAPES_CLASSES),
        "INPUT.IMG_SCALE", [160, 128], "INPUT.CROP.SIZE", [96, 96]])
    out = SemSegDatasetMapper(cfg, is_train=True)(dicts[0])  # validates the labels
    assert out["sem_seg"].shape[0] <= 96


def test_shapes_classes_balanced_and_objects_large():
    # What makes the quickstart learnable in a few CPU minutes (issue 15): every object class
    # gets a fair share of the pixels (triangles, the smallest per radius, included) and objects
    # cover a good part of every image without crowding it.
    counts, object_fraction = np.zeros(256, np.int64), []
    for i in range(40):
        _, label = shapes.render_shapes_sample(np.random.default_rng([0, 0, i]))
        counts += np.bincount(label.ravel(), minlength=256)
        object_fraction.append(((label > 0) & (label < 255)).mean())
    share = counts[1:len(shapes.SHAPES_CLASSES)] / counts[1:len(shapes.SHAPES_CLASSES)].sum()
    # (1/7 each if uniform; measured 0.09-0.24 on these 40)
    assert share.min() >= 0.06, dict(zip(shapes.SHAPES_CLASSES[1:], share.round(3)))
    assert min(object_fraction) >= 0.05 and 0.2 <= np.mean(object_fraction) <= 0.45
    assert counts[255] < 0.06 * counts.sum()  # the ignore bands stay thin


def test_shapes_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    real = shapes.render_shapes_sample

    def failing(rng):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # e.g. Ctrl-C half-way
        return real(rng)

    monkeypatch.setattr(shapes, "render_shapes_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        shapes.prepare_shapes_dataset(str(tmp_path), splits=SMALL)
    assert os.listdir(tmp_path) == []  # neither the tree nor the temporary folder
    monkeypatch.setattr(shapes, "render_shapes_sample", real)
    root = shapes.prepare_shapes_dataset(str(tmp_path), splits=SMALL)
    assert len(os.listdir(os.path.join(root, "images/train"))) == 6


def test_shapes_incomplete_tree_is_never_used(tmp_path):
    root = shapes.prepare_shapes_dataset(str(tmp_path), splits=SMALL)
    os.remove(os.path.join(root, "annotations/val/0001.png"))  # a file lost
    with pytest.raises(RuntimeError, match="not a complete d2seg_shapes tree.*delete it"):
        shapes.prepare_shapes_dataset(str(tmp_path), splits=SMALL)
    half = tmp_path / "half" / "d2seg_shapes" / "images" / "train"
    half.mkdir(parents=True)  # a half-written tree without the marker
    with pytest.raises(RuntimeError, match="not a complete"):
        shapes.prepare_shapes_dataset(str(tmp_path / "half"), splits=SMALL)


def test_shapes_outdated_tree_is_regenerated(tmp_path, monkeypatch):
    # a tree d2seg generated for another seed / generator version is replaced, never reused
    old = shapes.prepare_shapes_dataset(str(tmp_path), seed=0, splits=SMALL)
    digest = tree_digest(old)
    new = shapes.prepare_shapes_dataset(str(tmp_path), seed=1, splits=SMALL)
    assert new == old and tree_digest(new) != digest
    assert tree_digest(new) == tree_digest(
        shapes.prepare_shapes_dataset(str(tmp_path / "ref"), seed=1, splits=SMALL))
    monkeypatch.setattr(shapes, "_VERSION", shapes._VERSION + 1)
    shapes.prepare_shapes_dataset(str(tmp_path), seed=1, splits=SMALL)
    assert shapes._read_marker(new)["version"] == shapes._VERSION
    assert sorted(os.listdir(tmp_path)) == ["d2seg_shapes", "ref"]  # nothing left aside


def test_shapes_concurrent_generation(tmp_path):
    results, errors = [], []
    barrier = threading.Barrier(3)

    def run():
        barrier.wait()
        try:
            results.append(shapes.prepare_shapes_dataset(str(tmp_path), splits=SMALL))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert os.listdir(tmp_path) == ["d2seg_shapes"]  # temporary folders cleaned up
    assert tree_digest(results[0]) == tree_digest(
        shapes.prepare_shapes_dataset(str(tmp_path / "ref"), splits=SMALL))


def test_shapes_generated_lazily_through_catalog(tmp_path, request):
    name = unique_name(request)
    shapes.register_shapes_dataset(str(tmp_path), name=name, splits=SMALL)
    assert os.listdir(tmp_path) == []  # nothing written at registration
    dicts = DatasetCatalog.get(f"{name}_val")
    assert len(dicts) == 2 and len(DatasetCatalog.get(f"{name}_train")) == 6
    assert os.listdir(tmp_path) == [name]
