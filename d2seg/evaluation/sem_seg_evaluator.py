"""Detectron2's SemSegEvaluator with MMSegmentation's metric definitions.

Differences from Detectron2's own evaluator, all towards mmseg's numbers:
- a class absent from the ground truth but predicted somewhere counts with IoU 0 (Detectron2 drops
  it); only classes absent from both are NaN and left out of the mean (mmseg's nanmean);
- ground truth is read by training's reader (``d2seg.data.image_io.read_label``: the same modes,
  errors and ``reduce_zero_label``, 0 -> 255, k -> k-1, as mmseg re-applies it at evaluation);
- a per-class IoU/Acc table goes to the log and to ``sem_seg_per_class.json``;
- ``metrics`` (TEST.METRICS, mmseg's ``evaluation.metric``) adds mmseg's mDice and mFscore (with
  per-class Dice, Fscore, Precision, Recall), from the same confusion matrix;
- no RLE json of every prediction and no boundary IoU unless asked (they dominate evaluation time).
"""
import json
import logging
import os
from collections import OrderedDict

import numpy as np
from tabulate import tabulate

from detectron2.evaluation import SemSegEvaluator as D2SemSegEvaluator
from detectron2.utils.comm import all_gather, is_main_process, synchronize
from detectron2.utils.file_io import PathManager

from ..data.datasets.detectron2_builtin import dataset_metadata
from ..data.image_io import read_label

__all__ = ["SemSegEvaluator", "segmentation_metrics", "METRICS",
           "check_metrics"]

# mmseg's `evaluation.metric` names
METRICS = ("mIoU", "mDice", "mFscore")

logger = logging.getLogger(__name__)


def check_metrics(metrics) -> None:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"TEST.METRICS={list(metrics)}: unknown {unknown}; d2seg computes "
                         f"{sorted(METRICS)} (mmseg's evaluation.metric names)")


def _nanmean_percent(v: np.ndarray) -> float:
    """mmseg's ``np.nanmean(v) * 100``, NaN (without numpy's warning) when all are NaN."""
    return 100 * np.nanmean(v) if (~np.isnan(v)).any() else float("nan")


def _div(a, b):
    """a / b as mmseg's torch division: NaN where 0 / 0 (and inf where x / 0, x > 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def segmentation_metrics(conf: np.ndarray, metrics=("mIoU",), beta: float = 1):
    """mmseg's metrics from a (C+1) x (C+1) confusion matrix indexed [pred, gt], whose last
    row/column collects ignored ground truth. Returns per-class IoU and Acc (NaN where undefined)
    and the summary metrics in percent; with ``metrics`` naming "mDice" / "mFscore" the summary
    also holds mDice / mFscore, mPrecision, mRecall and a dict ``per_class`` of mmseg's
    ``total_area_to_metrics`` arrays (Dice, Fscore, Precision, Recall; NaN where mmseg's is)."""
    check_metrics(metrics)
    conf = conf[:-1, :-1].astype(np.float64)
    intersect = np.diag(conf)
    area_gt = conf.sum(axis=0)
    area_pred = conf.sum(axis=1)
    union = area_gt + area_pred - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersect / union, np.nan)
        acc = np.where(area_gt > 0, intersect / area_gt, np.nan)
    freq = area_gt / max(area_gt.sum(), 1)
    valid = ~np.isnan(iou)
    summary = {
        "mIoU": 100 * np.nanmean(iou) if valid.any() else float("nan"),
        "fwIoU": 100 * float(np.sum(freq[valid] * iou[valid])),
        "mACC": _nanmean_percent(acc),
        "pACC": 100 * intersect.sum() / max(area_gt.sum(), 1),
    }
    per_class = {}
    if "mDice" in metrics:
        per_class["Dice"] = _div(2 * intersect, area_pred + area_gt)
    if "mFscore" in metrics:
        precision, recall = _div(intersect, area_pred), _div(intersect, area_gt)
        per_class["Precision"], per_class["Recall"] = precision, recall
        # mmseg's f_score, class by class: NaN also where precision = recall = 0
        per_class["Fscore"] = _div((1 + beta ** 2) * precision * recall,
                                   beta ** 2 * precision + recall)
    for name, v in per_class.items():  # mmseg: np.nanmean(...) * 100
        summary["m" + name] = _nanmean_percent(v)
    if per_class:
        summary["per_class"] = per_class
    return iou, acc, summary


class SemSegEvaluator(D2SemSegEvaluator):
    """Semantic segmentation evaluator over a registered dataset (see module doc)."""

    def __init__(self, dataset_name, distributed=True, output_dir=None, *, write_predictions=False,
                 reduce_zero_label=None, metrics=("mIoU",)):
        """``reduce_zero_label``: re-apply it to the ground truth; None = the metadata's.
        ``metrics``: mmseg's metric names (TEST.METRICS); mIoU's numbers are always reported."""
        check_metrics(metrics)  # an unknown name fails now, not at the end
        self._metrics = tuple(metrics)
        if reduce_zero_label is None:
            reduce_zero_label = dataset_metadata(dataset_name).get("reduce_zero_label", False)

        def loading_fn(filename, dtype=np.int64):  # Detectron2's signature; the training reader
            return read_label(filename, bool(reduce_zero_label)).astype(dtype)

        super().__init__(dataset_name, distributed, output_dir, sem_seg_loading_fn=loading_fn)
        self._write_predictions = write_predictions
        self._compute_boundary_iou = False

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy().astype(np.int64)
            gt_file = self.input_file_to_gt_file[inp["file_name"]]
            gt = self.sem_seg_loading_fn(gt_file, dtype=np.int64)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"prediction for {inp['file_name']} has size {pred.shape} but its label "
                    f"{gt_file} has size {gt.shape}: the model must output (height, width)"
                )
            bad = (gt != self._ignore_label) & ((gt < 0) | (gt >= self._num_classes))
            if bad.any():
                raise ValueError(
                    f"label {gt_file} has values {sorted(set(np.unique(gt[bad]).tolist()))[:10]} "
                    f"outside [0, {self._num_classes}) and not the ignore value {self._ignore_label}"
                )
            gt[gt == self._ignore_label] = self._num_classes
            self._conf_matrix += np.bincount(
                (self._num_classes + 1) * pred.reshape(-1) + gt.reshape(-1),
                minlength=self._conf_matrix.size,
            ).reshape(self._conf_matrix.shape)
            if self._write_predictions:
                self._predictions.extend(self.encode_json_sem_seg(pred, inp["file_name"]))

    def evaluate(self):
        if self._distributed:
            synchronize()
            conf_list = all_gather(self._conf_matrix)
            if not is_main_process():
                return
            self._conf_matrix = np.sum(conf_list, axis=0)
        iou, acc, summary = segmentation_metrics(self._conf_matrix, self._metrics)
        extra = summary.pop("per_class", {})  # Dice, Precision, Recall, Fscore (TEST.METRICS)
        res = dict(summary)
        for name, v in zip(self._class_names, iou):
            res[f"IoU-{name}"] = 100 * v
        for name, v in zip(self._class_names, acc):
            res[f"ACC-{name}"] = 100 * v
        for kind, values in extra.items():
            for name, v in zip(self._class_names, values):
                res[f"{kind}-{name}"] = 100 * v
        table = tabulate(
            [(n, 100 * i, 100 * a, *(100 * v[k] for v in extra.values()))
             for k, (n, i, a) in enumerate(zip(self._class_names, iou, acc))],
            headers=["class", "IoU", "Acc", *extra], floatfmt=".2f", tablefmt="pipe",
        )
        logger.info(f"Per-class results on {self._dataset_name}:\n{table}")
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            per_class = {n: {"IoU": 100 * i, "Acc": 100 * a,
                             **{kind: 100 * v[k] for kind, v in extra.items()}}
                         for k, (n, i, a) in enumerate(zip(self._class_names, iou, acc))}
            with PathManager.open(os.path.join(self._output_dir, "sem_seg_per_class.json"), "w") as f:
                json.dump({"summary": summary, "per_class": per_class}, f, indent=1)
            if self._write_predictions:
                with PathManager.open(
                    os.path.join(self._output_dir, "sem_seg_predictions.json"), "w"
                ) as f:
                    json.dump(self._predictions, f)
        return OrderedDict({"sem_seg": res})
