"""mmseg's metric definitions on a hand-made case, through segmentation_metrics and through the
evaluator (plain, reduce_zero_label, Cityscapes' official script)."""
import importlib.util
import math

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators

import d2seg  # noqa: F401
from d2seg.data import register_sem_seg_folder
from d2seg.evaluation import SemSegEvaluator, build_evaluator, segmentation_metrics

import common
import dataset_trees as trees

# 4 classes; pixels as (gt, pred) pairs:
#   class 0: 4 GT pixels, 3 predicted 0, 1 predicted 1
#   class 1: 4 GT pixels, 2 predicted 1, 2 predicted 2
#   class 2: absent from the GT but predicted (2 pixels)      -> IoU 0 (mmseg; Detectron2 drops it)
#   class 3: absent from GT and predictions                    -> NaN, left out of the means
#   5 ignored GT pixels (predicted 0 and 3): count nowhere
GT = np.array([0, 0, 0, 0, 1, 1, 1, 1, 255, 255, 255, 255, 255])
PRED = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 0, 3, 3, 3])
# By hand: IoU0 = 3 / (4 + 3 - 3) = 0.75, IoU1 = 2 / (4 + 3 - 2) = 0.4, IoU2 = 0 / 2 = 0,
# IoU3 = NaN; mIoU = (0.75 + 0.4 + 0) / 3. Acc0 = 3/4, Acc1 = 2/4 (Acc2, Acc3 NaN): mACC = 0.625.
# pACC = 5/8. fwIoU = 0.5 * 0.75 + 0.5 * 0.4 = 0.575.
EXPECTED = {"mIoU": 100 * 1.15 / 3, "mACC": 62.5, "pACC": 62.5, "fwIoU": 57.5}


def confusion(gt, pred, n=4, ignore=255):
    gt = np.where(gt == ignore, n, gt)
    return np.bincount((n + 1) * pred + gt, minlength=(n + 1) ** 2).reshape(n + 1, n + 1)


def test_hand_made_confusion():
    iou, acc, summary = segmentation_metrics(confusion(GT, PRED))
    np.testing.assert_allclose(iou[:3], [0.75, 0.4, 0.0])
    assert math.isnan(iou[3])
    np.testing.assert_allclose(acc[:2], [0.75, 0.5])
    assert math.isnan(acc[2]) and math.isnan(acc[3])
    for k, v in EXPECTED.items():
        assert summary[k] == pytest.approx(v), k


def test_same_numbers_as_mmseg():
    mmseg_eval = pytest.importorskip("mmseg.core.evaluation")
    ret = mmseg_eval.mean_iou([PRED.reshape(1, -1)], [GT.reshape(1, -1)], 4, 255)
    iou, acc, summary = segmentation_metrics(confusion(GT, PRED))
    np.testing.assert_allclose(iou, ret["IoU"], equal_nan=True)
    np.testing.assert_allclose(acc, ret["Acc"], equal_nan=True)
    assert summary["mIoU"] == pytest.approx(100 * np.nanmean(ret["IoU"]))
    assert summary["pACC"] == pytest.approx(100 * ret["aAcc"])


def logits_for(pred, n):
    return torch.nn.functional.one_hot(torch.as_tensor(pred, dtype=torch.long), n).permute(2, 0, 1).float()


@pytest.mark.parametrize("reduce", [False, True])
def test_evaluator_on_the_hand_made_case(tmp_path, reduce):
    """Label PNG -> evaluator -> the numbers above; with reduce_zero_label the file holds the
    raw ids (0 = ignore, k + 1 = class k), as ADE20K's."""
    name = f"test_eval_hand_made_{reduce}"
    raw = np.where(GT == 255, 0, GT + 1) if reduce else GT
    trees.save_image(str(tmp_path / "img" / "a.jpg"), 1, len(GT))
    trees.save_label(str(tmp_path / "gt" / "a.png"), raw.reshape(1, -1))
    register_sem_seg_folder(name, str(tmp_path / "img"), str(tmp_path / "gt"), list("abcd"),
                            reduce_zero_label=reduce)
    ev = SemSegEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    ev.reset()
    d = DatasetCatalog.get(name)[0]
    ev.process([d], [{"sem_seg": logits_for(PRED.reshape(1, -1), 4)}])
    res = ev.evaluate()["sem_seg"]
    for k, v in EXPECTED.items():
        assert res[k] == pytest.approx(v), k
    assert res["IoU-c"] == 0 and math.isnan(res["IoU-d"])


def test_cityscapes_official_evaluator_path(tmp_path):
    pytest.importorskip("cityscapesscripts")
    trees.make_cityscapes(tmp_path, splits=(("val", 2),))
    with trees.registered_under(tmp_path, "cityscapes"):
        cfg = common.tiny_cfg(num_classes=19)
        evaluator = build_evaluator(cfg, "cityscapes_fine_sem_seg_val", str(tmp_path / "out"))
        assert isinstance(evaluator, DatasetEvaluators) and len(evaluator._evaluators) == 2
        evaluator.reset()
        for d in DatasetCatalog.get("cityscapes_fine_sem_seg_val"):  # a perfect prediction
            train_ids = np.asarray(Image.open(d["sem_seg_file_name"]))
            pred = np.where(train_ids == 255, 0, train_ids)  # (ignored pixels: any class)
            evaluator.process([d], [{"sem_seg": logits_for(pred, 19)}])
        res = evaluator.evaluate()
    assert res["sem_seg"]["mIoU"] == pytest.approx(100)
    assert res["cityscapes_sem_seg"]["IoU"] == pytest.approx(100)
    assert set(res["cityscapes_sem_seg"]) == {"IoU", "iIoU", "IoU_sup", "iIoU_sup"}
    assert MetadataCatalog.get("cityscapes_fine_sem_seg_val").evaluator_type == "cityscapes_sem_seg"
