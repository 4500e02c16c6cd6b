"""The occlusion-aware face config (mmseg's FaceOccludedDataset,
deeplabv3plus_r101_512x512_C-CM+C-WO-NatOcc-SOT): registration and file lists against mmseg's
dataset class, tools/datasets/occlusion_face.py on a miniature official tree, RandomRotate and the
multi-scale + flip test views (ResizeToMultiple) against mmseg's pipeline, mDice / mFscore against
mmseg's eval_metrics, the generated yaml against mmseg's config, and a short train + evaluate."""
import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T

from d2seg.data.datasets.occlusion_face import (OCCLUSION_FACE_CLASSES, OCCLUSION_FACE_COLORS,
                                                OCCLUSION_FACE_SETS)
from d2seg.data.mappers import RandomRotate, SemSegTTAMapper, build_test_augmentations, \
    build_train_augmentations
from d2seg.evaluation import build_evaluator, segmentation_metrics

import dataset_trees as trees
from common import REPO_CONFIGS, assert_matches_mmseg_steps, get_d2seg_cfg

STEM = "deeplabv3plus/deeplabv3plus_r101_512x512_C-CM+C-WO-NatOcc-SOT"
YAML = REPO_CONFIGS / (STEM + ".yaml")
TRAIN_NAMES = [n for n in OCCLUSION_FACE_SETS if n.endswith("_train")]
VAL_NAME = "occlusion_face_realocc_sem_seg_val"


def mmseg_cfg():
    pytest.importorskip("mmseg")
    from mmseg_peer import mmseg_config

    return mmseg_config(STEM)


def mmseg_transforms():
    pytest.importorskip("mmseg")
    from mmseg_peer import stub_mmcv_ext

    stub_mmcv_ext()
    from mmseg.datasets.pipelines import Compose, transforms as mt

    return Compose, mt


# ---- registration --------------------------------------------------------------------------------
def test_classes_and_palette_are_mmseg():
    for name in OCCLUSION_FACE_SETS:
        assert name in DatasetCatalog.list()
        trees.check_metadata_equals_mmseg(name, "FaceOccludedDataset", False)
    assert OCCLUSION_FACE_CLASSES == ["background", "face"]
    assert OCCLUSION_FACE_COLORS == [[0, 0, 0], [128, 0, 0]]


def test_file_lists_equal_mmseg_datasets(tmp_path):
    """Each registered set lists the files mmseg's FaceOccludedDataset of the config's
    data.train[i] / data.val loads (its split joined to the data root), in DATASETS.TRAIN's
    order = mmseg's concatenation order."""
    c = mmseg_cfg()
    from mmseg.datasets import build_dataset

    base = trees.make_occlusion_face(str(tmp_path / "data"))
    cfg = get_d2seg_cfg(YAML)
    assert list(cfg.DATASETS.TRAIN) == TRAIN_NAMES and list(cfg.DATASETS.TEST) == [VAL_NAME]
    with trees.registered_under(tmp_path / "data", "occlusion_face"):
        for name, ds_cfg in zip(TRAIN_NAMES + [VAL_NAME], list(c.data.train) + [c.data.val]):
            ds = build_dataset(dict(ds_cfg, data_root=base, pipeline=[]))
            want = [(os.path.join(ds.img_dir, i["filename"]),
                     os.path.join(ds.ann_dir, i["ann"]["seg_map"])) for i in ds.img_infos]
            got = [(d["file_name"], d["sem_seg_file_name"]) for d in DatasetCatalog.get(name)]
            assert [tuple(map(os.path.normpath, p)) for p in got] == \
                [tuple(map(os.path.normpath, p)) for p in want], name
            assert len(got) == 2
        # Detectron2 concatenates DATASETS.TRAIN as mmseg's ConcatDataset: 3 sets x 2 faces
        from detectron2.data import get_detection_dataset_dicts
        dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
        assert [d["file_name"].split(os.sep)[-3] for d in dicts] == [
            s for s in trees.FACE_SETS for _ in trees.FACE_TRAIN]
        code, report = trees.run_check_dataset(VAL_NAME)  # tools/check_dataset.py is content
        assert code == 0, report
        # a missing split file: the error names it and the tool
        os.remove(os.path.join(base, "RealOcc", "split", "val.txt"))
        with pytest.raises(FileNotFoundError, match=r"val\.txt.*occlusion_face\.py"):
            DatasetCatalog.get(VAL_NAME)


# ---- tools/datasets/occlusion_face.py ----------------------------------------------------------
def run_tool(args, capsys):
    tool = trees.load_tool("occlusion_face")
    capsys.readouterr()
    try:
        code = tool.main(args)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tool_on_the_official_layout(tmp_path, capsys):
    base = trees.make_occlusion_face(str(tmp_path))
    code, out, _ = run_tool([base], capsys)
    assert code == 0 and "RandOcc: 2 image/mask pairs" in out and "RealOcc: 2" in out
    code, out, _ = run_tool([base], capsys)  # recorded: nothing to do
    assert code == 0 and "already checked" in out

    # a truncated image and a missing mask: both named, exit code 2
    img = os.path.join(base, "NatOcc_object", "img", "00034.jpg")
    trees.truncate(img, 0.5)
    missing = os.path.join(base, "RealOcc", "mask", "real_0002.png")
    os.remove(missing)
    code, _, err = run_tool([base, "--force"], capsys)
    assert code == 2 and "2 problem(s)" in err
    assert f"{img}: cannot decode" in err and f"{missing}: missing" in err
    trees.save_image(img, seed=3)
    trees.save_label(missing, trees.face_mask(1))

    # 0/255 masks: an error saying what to do; --convert-255 rewrites them as 0/1
    mask = os.path.join(base, "RandOcc", "mask", "00012.png")
    trees.save_label(mask, trees.face_mask(5) * 255)
    code, _, err = run_tool([base, "--force"], capsys)
    assert code == 2 and f"{mask}: values 0/255" in err and "--convert-255" in err
    code, _, _ = run_tool([base, "--force", "--convert-255"], capsys)
    assert code == 0
    from PIL import Image
    np.testing.assert_array_equal(np.asarray(Image.open(mask)), trees.face_mask(5))

    # other values, a wrong size, an RGB mask, a split listing file names, no train.txt
    trees.save_label(mask, trees.face_mask(5) * 2)
    code, _, err = run_tool([base, "--force"], capsys)
    assert code == 2 and f"{mask}: values [0, 2]" in err
    trees.save_label(mask, trees.face_mask(5, h=8))
    code, _, err = run_tool([base, "--force"], capsys)
    assert code == 2 and f"{mask}: 8x24 (HxW) but its image" in err
    trees.save_image(mask.replace(".png", "_rgb.png"))
    os.replace(mask.replace(".png", "_rgb.png"), mask)
    code, _, err = run_tool([base, "--force"], capsys)
    assert code == 2 and f"{mask}: a 3-channel mask" in err
    trees.write_lines(os.path.join(base, "RealOcc", "split", "val.txt"), ["real_0001.jpg"])
    code, _, err = run_tool([base, "--force", "--val-only"], capsys)
    assert code == 2 and "lists file names ('real_0001.jpg')" in err
    os.remove(os.path.join(base, "train.txt"))
    code, _, err = run_tool([base, "--force"], capsys)
    assert code == 2 and os.path.join(base, "train.txt") in err and "does not exist" in err


# ---- the pipeline pieces against mmseg's ------------------------------------------------------
def _img_label(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[h // 4: 3 * h // 4, w // 3:] = 1
    label[rng.random((h, w)) < 0.02] = 255
    return img, label


def test_random_rotate_matches_mmseg():
    _, mt = mmseg_transforms()
    ref_t = mt.RandomRotate(prob=0.5, degree=(-30, 30))
    ours = RandomRotate(0.5, (-30, 30))
    img, label = _img_label(37, 53)
    rotated = 0
    for seed in range(16):  # the same draws, rotated or not
        aug_input = assert_matches_mmseg_steps([ref_t], ours, img, label, seed)
        rotated += not np.array_equal(aug_input.image, img)
    assert 0 < rotated < 16  # both branches
    assert (aug_input.sem_seg == 255).sum() >= (label == 255).sum()


def test_train_pipeline_of_the_config_matches_mmseg():
    """Resize(512x512, keep ratio) -> RandomFlip -> RandomRotate -> PhotoMetricDistortion,
    mmseg's built from its own config, d2seg's from the yaml (BGR: mmseg's channel order)."""
    Compose, _ = mmseg_transforms()
    steps = [s for s in mmseg_cfg().train_pipeline
             if s["type"] in ("Resize", "RandomFlip", "RandomRotate", "PhotoMetricDistortion")]
    assert len(steps) == 4
    ref_pipeline = Compose(steps)
    cfg = get_d2seg_cfg(YAML, ["INPUT.FORMAT", "BGR"])
    augs = build_train_augmentations(cfg)
    assert [type(a).__name__ for a in augs] == ["ResizeRatioRange", "RandomFlip", "RandomRotate",
                                               "PhotoMetricDistortion"]
    augs = T.AugmentationList(augs)
    img, label = _img_label(60, 45)
    for seed in range(6):
        aug_input = assert_matches_mmseg_steps([ref_pipeline], augs, img, label, seed)
        assert aug_input.image.shape == (512, 384, 3)  # long side 512, no crop


def test_test_views_match_mmseg_multiscale_flip_aug():
    """The 12 views of the config's test (6 ratios x flip, each resized to a multiple of 32)
    are mmseg's MultiScaleFlipAug views, pixel for pixel."""
    Compose, _ = mmseg_transforms()
    aug = dict(mmseg_cfg().test_pipeline[1])
    aug["transforms"] = [t for t in aug["transforms"]
                         if t["type"] in ("Resize", "ResizeToMultiple", "RandomFlip")]
    assert len(aug["transforms"]) == 3
    ref = Compose([aug])
    cfg = get_d2seg_cfg(YAML)
    assert cfg.TEST.AUG.ENABLED and cfg.TEST.AUG.ALWAYS and cfg.INPUT.TEST_SIZE_DIVISOR == 32
    tta = SemSegTTAMapper(cfg)
    img, _ = _img_label(50, 70)
    want = ref({"img": img.copy()})["img"]
    got = tta({"image": torch.from_numpy(img.transpose(2, 0, 1).copy()), "height": 50,
               "width": 70})
    assert len(got) == len(want) == 12
    for k, (g, w) in enumerate(zip(got, want)):
        assert g["image"].shape[1] % 32 == 0 and g["image"].shape[2] % 32 == 0
        np.testing.assert_array_equal(g["image"].permute(1, 2, 0).numpy(), w, err_msg=f"view {k}")
    # the rescaled size itself is no multiple of 32 here: ResizeToMultiple did resize
    assert tuple(want[4].shape[:2]) == (384, 512) and (50 * 512 / 70) % 32
    # single-scale test (TEST.AUG off): the ratio-1 view
    t = T.AugmentationList(build_test_augmentations(cfg))
    aug_input = T.AugInput(img.copy())
    t(aug_input)
    np.testing.assert_array_equal(aug_input.image, want[4])


# ---- mDice / mFscore ---------------------------------------------------------------------------
# 5 classes, (gt, pred) per pixel; 255 = ignored ground truth
GT = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 255, 255])
PRED = np.array([0, 0, 0, 1, 1, 1, 2, 4, 0, 0, 2, 1])
# class 0: gt 4, pred 5, hit 3: Dice 6/9, P 3/5, R 3/4, F = Dice
# class 1: gt 4, pred 3, hit 2: Dice 4/7, P 2/3, R 1/2
# class 2: gt 2, pred 1, hit 0: Dice 0, P = R = 0 -> F NaN (mmseg's f_score: 0 / 0)
# class 3: absent from both: all NaN;  class 4: predicted only: Dice 0, P 0, R NaN, F NaN


def test_dice_and_fscore_equal_mmseg_eval_metrics():
    n = 5
    conf = np.bincount((n + 1) * PRED + np.where(GT == 255, n, GT),
                       minlength=(n + 1) ** 2).reshape(n + 1, n + 1)
    iou, acc, summary = segmentation_metrics(conf, ["mIoU", "mDice", "mFscore"])
    per = summary["per_class"]
    np.testing.assert_allclose(per["Dice"], [6 / 9, 4 / 7, 0, np.nan, 0], equal_nan=True)
    np.testing.assert_allclose(per["Precision"], [3 / 5, 2 / 3, 0, np.nan, 0], equal_nan=True)
    np.testing.assert_allclose(per["Recall"], [3 / 4, 1 / 2, 0, np.nan, np.nan], equal_nan=True)
    np.testing.assert_allclose(per["Fscore"], [6 / 9, 4 / 7, np.nan, np.nan, np.nan],
                               equal_nan=True)
    assert summary["mDice"] == pytest.approx(100 * (6 / 9 + 4 / 7) / 4)
    assert summary["mFscore"] == pytest.approx(100 * (6 / 9 + 4 / 7) / 2)
    with pytest.raises(ValueError, match=r"TEST.METRICS=\['mIoU', 'mAP'\]: unknown \['mAP'\]"):
        segmentation_metrics(conf, ["mIoU", "mAP"])

    mmseg_eval = pytest.importorskip("mmseg.core.evaluation")
    ref = mmseg_eval.eval_metrics([PRED.reshape(1, -1)], [GT.reshape(1, -1)], n, 255,
                                  metrics=["mIoU", "mDice", "mFscore"], beta=1)
    np.testing.assert_allclose(iou, ref["IoU"], equal_nan=True)
    np.testing.assert_allclose(acc, ref["Acc"], equal_nan=True)
    for k in ("Dice", "Precision", "Recall", "Fscore"):
        np.testing.assert_allclose(per[k], np.asarray(ref[k], np.float64), equal_nan=True,
                                   err_msg=k)
        # mmseg's summary: np.round(np.nanmean(v) * 100, 2)
        assert summary["m" + k] == pytest.approx(100 * np.nanmean(ref[k]), abs=1e-9), k


def test_evaluator_reports_what_the_config_asks(tmp_path):
    """build_evaluator with the yaml's TEST.METRICS on the face val set: mDice, mFscore and the
    per-class values, equal to mmseg's eval_metrics on the same files."""
    trees.make_occlusion_face(str(tmp_path / "data"))
    cfg = get_d2seg_cfg(YAML, ["OUTPUT_DIR", str(tmp_path / "out")])
    assert list(cfg.TEST.METRICS) == ["mIoU", "mDice", "mFscore"]
    preds, gts = [], []
    with trees.registered_under(tmp_path / "data", "occlusion_face"):
        ev = build_evaluator(cfg, VAL_NAME)
        ev.reset()
        for k, d in enumerate(DatasetCatalog.get(VAL_NAME)):
            from PIL import Image
            gt = np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64)
            pred = np.roll(gt, 3 + k, axis=1)  # shifted: every class partly right
            ev.process([d], [{"sem_seg": torch.nn.functional.one_hot(
                torch.from_numpy(pred), 2).permute(2, 0, 1).float()}])
            preds.append(pred)
            gts.append(gt)
        res = ev.evaluate()["sem_seg"]
    for key in ("mIoU", "mDice", "mFscore", "mPrecision", "mRecall", "Dice-face",
                "Fscore-background", "Precision-face", "Recall-face"):
        assert key in res, key
    per_class = json.load(open(tmp_path / "out" / "inference" / VAL_NAME
                               / "sem_seg_per_class.json"))
    assert set(per_class["per_class"]["face"]) == {"IoU", "Acc", "Dice", "Precision", "Recall",
                                                  "Fscore"}
    mmseg_eval = pytest.importorskip("mmseg.core.evaluation")
    ref = mmseg_eval.eval_metrics(preds, gts, 2, 255, metrics=["mIoU", "mDice", "mFscore"])
    for k in ("Dice", "Fscore", "Precision", "Recall", "IoU"):
        for c, name in enumerate(OCCLUSION_FACE_CLASSES):
            assert res[f"{k}-{name}"] == pytest.approx(100 * float(ref[k][c])), (k, name)
        assert res["m" + k] == pytest.approx(100 * np.nanmean(ref[k]))


# ---- the config --------------------------------------------------------------------------------
def test_yaml_is_mmseg_config():
    """The keys the new pipeline pieces read, against mmseg's config."""
    c = mmseg_cfg()
    cfg = get_d2seg_cfg(YAML)
    rot = next(s for s in c.train_pipeline if s["type"] == "RandomRotate")
    assert cfg.INPUT.ROTATE.PROB == rot["prob"] and list(cfg.INPUT.ROTATE.DEGREE) == list(
        rot["degree"])
    resize = next(s for s in c.train_pipeline if s["type"] == "Resize")
    assert list(cfg.INPUT.IMG_SCALE) == list(resize["img_scale"]) and not cfg.INPUT.RATIO_RANGE
    assert not cfg.INPUT.CROP.ENABLED and cfg.INPUT.SIZE_DIVISIBILITY == 0  # pad to the largest
    aug = c.test_pipeline[1]
    assert list(cfg.TEST.AUG.RATIOS) == aug["img_ratios"] and cfg.TEST.AUG.FLIP == aug["flip"]
    assert list(cfg.TEST.METRICS) == c.evaluation["metric"]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 2 and cfg.MODEL.RESNETS.DEPTH == 101


TINY = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "50",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.RESNETS.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.AUX_HEAD.CONVS_DIM", "8",
    "INPUT.IMG_SCALE", "[64,64]", "INPUT.TEST_IMG_SCALE", "[64,64]", "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "2",
    "SOLVER.CHECKPOINT_PERIOD", "100",
]


def test_train_and_evaluate_as_mmseg(tmp_path):
    """tools/train_net.py on the miniature tree with the yaml (a narrow model): trains on the 3
    concatenated sets, and its evaluation is the multi-scale + flip test with mDice / mFscore."""
    trees.make_occlusion_face(str(tmp_path / "data"))
    repo = REPO_CONFIGS.parent
    out = tmp_path / "run"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(repo / "tools" / "train_net.py"), "--config-file", str(YAML),
         *TINY, "OUTPUT_DIR", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    rows = [json.loads(line) for line in open(out / "metrics.json") if line.strip()]
    evals = [r for r in rows if "sem_seg_TTA/mIoU" in r]
    assert evals, rows[-1]
    assert all(f"sem_seg_TTA/{k}" in evals[-1] for k in ("mDice", "mFscore", "Dice-face"))
    assert not any("sem_seg/mIoU" in r for r in rows)  # no single-scale evaluation
    assert "ratios [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]" in log and "flip True" in log


def test_generator_refuses_what_differs_from_this_config(monkeypatch):
    """The translation of the new pieces reads every value: a change it cannot express stops it,
    naming the key."""
    pytest.importorskip("mmseg")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "generate_configs", REPO_CONFIGS.parent / "dev" / "generate_configs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    reader = sys.modules["mmseg_translate.read"]  # where Translation reads mmseg's config
    real = reader.load_mmseg

    def step(c, kind, where="train_pipeline"):
        pipeline = c[where] if where == "train_pipeline" else c[where][1]["transforms"]
        return next(s for s in pipeline if s["type"] == kind)

    def both(edit):  # the config's pipelines and the datasets' copies alike
        def apply(c):
            edit(c)
            for d in c["data"]["train"]:
                d["pipeline"] = c["train_pipeline"]
            c["data"]["val"]["pipeline"] = c["test_pipeline"]
        return apply

    cases = [
        (lambda c: c["evaluation"].update(metric=["mIoU", "mAP"]), "evaluation.metric"),
        (both(lambda c: step(c, "RandomRotate").update(auto_bound=True)), "auto_bound"),
        (both(lambda c: step(c, "ResizeToMultiple", "test_pipeline").update(
            interpolation="nearest")), "interpolation"),
        (both(lambda c: c["train_pipeline"].insert(3, dict(type="RandomCrop", crop_size=(9, 9)))),
         "RandomCrop without Pad"),
        (lambda c: c["data"]["train"].reverse(), "data.train[0].img_dir"),
        (lambda c: c["data"]["train"].pop(), "data.train has 2 dataset(s)"),
        (lambda c: c["data"].update(val=[c["data"]["val"]]), "data.val is a list"),
        (lambda c: c.update(dataset_train_A=dict(c["dataset_train_A"], split="other.txt")),
         "variable dataset_train_A"),
    ]
    for edit, where in cases:
        def load(s, edit=edit):
            raw, path = real(s)
            edit(raw)
            return raw, path
        monkeypatch.setattr(reader, "load_mmseg", load)
        with pytest.raises(gen.TranslationError, match=re.escape(where)):
            gen.Translation(STEM)
    monkeypatch.setattr(reader, "load_mmseg", real)
    t = gen.Translation(STEM)
    assert t.cfg.TEST.AUG.ALWAYS and t.facts["crop"] is None
