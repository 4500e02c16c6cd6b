"""Detectron2's DefaultTrainer with d2seg's data mappers, evaluators and poly schedule."""
import logging
import weakref

import torch

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import SegCheckpointer
from ..config import add_d2seg_config
from ..data.mappers import SemSegDatasetMapper
from ..evaluation import build_evaluator
from ..solver import build_lr_scheduler

__all__ = ["Trainer", "setup_cfg", "check_config"]

logger = logging.getLogger(__name__)


def check_config(cfg) -> None:
    """Fails early, naming the key and dataset, when the config disagrees with the datasets."""
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        meta = MetadataCatalog.get(name)
        classes = meta.get("stuff_classes", None)
        if classes is not None and len(classes) != num_classes:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} but dataset {name!r} has "
                f"{len(classes)} classes ({', '.join(map(str, classes[:5]))}, ...): set "
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES {len(classes)}"
            )
        ignore = meta.get("ignore_label", None)
        if ignore is not None and ignore != cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE} but dataset "
                f"{name!r} has ignore_label={ignore}"
            )
    crop = cfg.INPUT.CROP
    if crop.ENABLED and (len(crop.SIZE) != 2 or min(crop.SIZE) <= 0):
        raise ValueError(f"INPUT.CROP.SIZE={list(crop.SIZE)} must be two positive ints (h, w)")


def setup_cfg(args, default_setup_fn=default_setup):
    """get_cfg + add_d2seg_config + file + command-line overrides, frozen and checked."""
    cfg = get_cfg()
    add_d2seg_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but no GPU is visible: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    check_config(cfg)
    if default_setup_fn is not None:
        default_setup_fn(cfg, args)
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2seg", abbrev_name="d2seg")
    return cfg


class Trainer(DefaultTrainer):
    def build_hooks(self):
        # DefaultTrainer made a DetectionCheckpointer just before this call: use the crash-safe,
        # mmseg-aware one for the periodic checkpoints and resume_or_load.
        self.checkpointer = SegCheckpointer(
            self._trainer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=SemSegDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=SemSegDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)
