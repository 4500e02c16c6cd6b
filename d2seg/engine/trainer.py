"""Detectron2's DefaultTrainer with d2seg's data mappers, evaluators and poly schedule."""
import logging
import os
import weakref
from collections import OrderedDict

import torch

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import (
    DefaultTrainer,
    TrainerBase,
    create_ddp_model,
    default_setup,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import SegCheckpointer
from ..checkpoint.catalog import from_scratch_warning
from ..config import add_d2seg_config
from ..data.datasets.from_config import register_config_datasets
from ..data.mappers import SemSegDatasetMapper
from ..data.mappers.transforms import check_crop_size
from ..data.resumable import build_resumable_train_loader, data_seed, set_start_iter
from ..data.worker_threads import rank_thread_count
from ..evaluation import build_evaluator
from ..modeling.test_time_augmentation import SemanticSegmentorWithTTA
from ..solver import build_lr_scheduler, build_optimizer
from .amp import build_step_trainer
from .reliability import IterationSeed, RecordingLoader, explain_step_error

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
    check_crop_size(cfg)
    if cfg.TEST.MODE == "slide" and any(s > c for s, c in zip(cfg.TEST.STRIDE, cfg.TEST.CROP_SIZE)):
        raise ValueError(f"TEST.STRIDE={list(cfg.TEST.STRIDE)} is larger than TEST.CROP_SIZE="
                         f"{list(cfg.TEST.CROP_SIZE)}: slide inference would skip pixels")


def setup_cfg(args, default_setup_fn=default_setup):
    """get_cfg + add_d2seg_config + file + command-line overrides, frozen and checked."""
    cfg = get_cfg()
    add_d2seg_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_config_datasets(cfg)  # DATASETS.FOLDER, before check_config reads their metadata
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but no GPU is visible: using the CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    check_config(cfg)
    if default_setup_fn is not None:
        default_setup_fn(cfg, args)
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2seg", abbrev_name="d2seg")
    return cfg


def cpu_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """torch's SyncBatchNorm refuses CPU tensors; Detectron2's NaiveSyncBatchNorm all-reduces the
    statistics over gloo instead (with equal per-process batches, BN over the full batch)."""
    if isinstance(module, torch.nn.SyncBatchNorm):
        new = NaiveSyncBatchNorm(module.num_features, module.eps, module.momentum)
        new.load_state_dict(module.state_dict())
        new.weight.requires_grad_(module.weight.requires_grad)
        new.bias.requires_grad_(module.bias.requires_grad)
        return new
    for name, child in module.named_children():
        setattr(module, name, cpu_sync_batchnorm(child))
    return module


def pin_on_cuda(cfg, loader):
    """Page-locked batches when the model is on a GPU (Detectron2's test loader takes no
    ``pin_memory``; the attribute is read when iteration starts)."""
    loader.pin_memory = cfg.MODEL.DEVICE.startswith("cuda")
    return loader


def share_cpu_threads() -> None:
    """Each of the processes on this machine gets its share of the cores (OMP_NUM_THREADS when
    set), not all of them: 8 ranks x all cores oversubscribe the CPU."""
    if comm.get_local_size() > 1:
        torch.set_num_threads(rank_thread_count(comm.get_local_size()))


class Trainer(DefaultTrainer):
    """DefaultTrainer whose __init__ differs in two places: DDP also wraps CPU models (gloo; Detectron2
    passes a GPU device id), and checkpoints go through the crash-safe, mmseg-aware SegCheckpointer."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        share_cpu_threads()
        model = self.build_model(cfg)  # MODEL.SPEED applied in here, before DDP wraps it
        optimizer = self.build_optimizer(cfg, model)
        # remembers the last batch, so a NaN loss or an OOM names its files and shapes
        data_loader = RecordingLoader(self.build_train_loader(cfg))
        ddp_kwargs = {"device_ids": None} if cfg.MODEL.DEVICE == "cpu" else {}
        model = create_ddp_model(model, broadcast_buffers=False, **ddp_kwargs)
        # SOLVER.AMP: autocast in SOLVER.AMP.DTYPE on CPU or GPU (Detectron2's AMPTrainer is CUDA-only)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # dataset: an mmseg checkpoint's meta.CLASSES/PALETTE are checked against its metadata;
        # fine_tune: MODEL.WEIGHTS of another class count re-initialise the classifiers (a
        # --resume from last_checkpoint stays strict: SegCheckpointer.resume_or_load)
        self.checkpointer = SegCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self),
            dataset=(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) + [""])[0], fine_tune=True,
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
            model = cpu_sync_batchnorm(model)
        return model

    def resume_or_load(self, resume=True):
        if not (resume and self.checkpointer.has_checkpoint()):
            # MODEL.WEIGHTS "" where mmseg starts from ImageNet: say what mmseg would have loaded
            msg = from_scratch_warning(self.cfg)
            if msg:
                logger.warning(msg)
        super().resume_or_load(resume=resume)
        # the data stream continues at the resumed iteration (docs/reliability.md)
        set_start_iter(self._trainer.data_loader, self.start_iter)

    def build_hooks(self):
        # dropout etc. draw from torch's RNG seeded per iteration: resumes are exact
        return [IterationSeed(data_seed(self.cfg))] + super().build_hooks()

    def run_step(self):
        try:
            super().run_step()
        except (FloatingPointError, torch.OutOfMemoryError) as e:
            raise explain_step_error(e, self.iter, self._trainer.data_loader.last) from e

    @classmethod
    def build_train_loader(cls, cfg):
        # resumable, position-seeded data stream (d2seg/data/resumable.py)
        return build_resumable_train_loader(cfg, SemSegDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = SemSegDatasetMapper(cfg, is_train=False, dataset_names=[dataset_name])
        return pin_on_cuda(cfg, build_detection_test_loader(cfg, dataset_name, mapper=mapper))

    @classmethod
    def build_tta_test_loader(cls, cfg, dataset_name):
        """Test loader of ORIGINAL images: SemanticSegmentorWithTTA resizes each view itself."""
        mapper = SemSegDatasetMapper(
            cfg, is_train=False, dataset_names=[dataset_name], augmentations=[]
        )
        return pin_on_cuda(cfg, build_detection_test_loader(cfg, dataset_name, mapper=mapper))

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluates ``model`` with mmseg's multi-scale (+ flip) test (TEST.AUG); results are
        keyed "<evaluator key>_TTA" (e.g. sem_seg_TTA) and written under inference_TTA/."""
        logger.info("Running inference with test-time augmentation: ratios %s x img_scale %s, "
                    "flip %s", list(cfg.TEST.AUG.RATIOS), list(cfg.INPUT.TEST_IMG_SCALE),
                    cfg.TEST.AUG.FLIP)
        tta_model = SemanticSegmentorWithTTA(cfg, model)
        results = OrderedDict()
        for name in cfg.DATASETS.TEST:
            evaluator = cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            res = inference_on_dataset(tta_model, cls.build_tta_test_loader(cfg, name), evaluator)
            results[name] = res
            if comm.is_main_process():
                logger.info(f"Evaluation results (TTA) for {name} in csv format:")
                print_csv_format(res)
        if len(results) == 1:
            results = list(results.values())[0]
        return OrderedDict((k + "_TTA", v) for k, v in results.items())

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's test, or -- with TEST.AUG.ENABLED and TEST.AUG.ALWAYS, configs whose
        mmseg test_pipeline is itself multi-scale / flip -- the augmented test, as mmseg's
        EvalHook runs aug_test for them (also each periodic evaluation while training)."""
        if evaluators is None and cfg.TEST.AUG.ENABLED and cfg.TEST.AUG.ALWAYS:
            return cls.test_with_TTA(cfg, model)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)
