"""Evaluator chosen from the dataset's metadata, as Detectron2's and Mask2Former's train_net do."""
import importlib.util
import logging
import os

import numpy as np

from detectron2.data import MetadataCatalog
from detectron2.evaluation import CityscapesSemSegEvaluator, DatasetEvaluators

from ..data.mappers.semseg_mapper import dataset_reduce_zero_label
from .sem_seg_evaluator import SemSegEvaluator

__all__ = ["build_evaluator", "CityscapesOfficialSemSegEvaluator"]

logger = logging.getLogger(__name__)


class CityscapesOfficialSemSegEvaluator(CityscapesSemSegEvaluator):
    """Detectron2's evaluator through cityscapesscripts, its results under "cityscapes_sem_seg"
    ("sem_seg" holds the mmseg-style numbers; DatasetEvaluators needs distinct keys)."""

    def evaluate(self):
        # cityscapesscripts (2.3.0) calls np.in1d, which numpy 2.4 removed: lend it np.isin's
        # flat equivalent while the script runs.
        shim = not hasattr(np, "in1d")
        if shim:
            np.in1d = lambda a, b, **kwargs: np.isin(np.ravel(a), b, **kwargs)
        try:
            ret = super().evaluate()
        finally:
            if shim:
                del np.in1d
        return None if ret is None else {"cityscapes_sem_seg": ret["sem_seg"]}


def build_evaluator(cfg, dataset_name, output_folder=None):
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "sem_seg")
    evaluators = [SemSegEvaluator(
        dataset_name, distributed=True, output_dir=output_folder,
        reduce_zero_label=dataset_reduce_zero_label(cfg, [dataset_name]),
        metrics=tuple(cfg.TEST.METRICS),
    )]
    if evaluator_type == "cityscapes_sem_seg":
        # Cityscapes' official script on top (needs cityscapesscripts); mmseg-style numbers first.
        if importlib.util.find_spec("cityscapesscripts") is None:
            logger.warning(f"{dataset_name}: `pip install cityscapesscripts` for Cityscapes' "
                           "official evaluation; reporting the mmseg-style metrics only")
        else:
            evaluators.append(CityscapesOfficialSemSegEvaluator(dataset_name))
    elif evaluator_type != "sem_seg":
        raise ValueError(
            f"dataset {dataset_name!r} has evaluator_type={evaluator_type!r}; d2seg evaluates "
            "'sem_seg' and 'cityscapes_sem_seg'"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
