"""Evaluator chosen from the dataset's metadata, as Detectron2's and Mask2Former's train_net do."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import CityscapesSemSegEvaluator, DatasetEvaluators

from .sem_seg_evaluator import SemSegEvaluator

__all__ = ["build_evaluator"]


def build_evaluator(cfg, dataset_name, output_folder=None):
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "sem_seg")
    evaluators = [SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)]
    if evaluator_type == "cityscapes_sem_seg":
        # Cityscapes' official script on top (needs cityscapesscripts); mmseg-style numbers first.
        evaluators.append(CityscapesSemSegEvaluator(dataset_name))
    elif evaluator_type != "sem_seg":
        raise ValueError(
            f"dataset {dataset_name!r} has evaluator_type={evaluator_type!r}; d2seg evaluates "
            "'sem_seg' and 'cityscapes_sem_seg'"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
