"""Bad input cases not covered elsewhere (docs/reliability.md lists which test covers which case):
NUM_CLASSES vs metadata, empty dataset, crop/pad and slide-window sizes, a NaN loss and an
out-of-memory in a training step (the error names the iteration, the batch's files and shapes)."""
import argparse
import os
import re

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

import d2seg  # noqa: F401
from d2seg.engine import Trainer, setup_cfg
from d2seg.engine.trainer import check_config

from test_train_e2e import REPO, TINY

OPTS = [*TINY, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0",
        "DATASETS.TEST", "()", "SEED", "0"]


def _cfg(tmp_path, *opts):
    return setup_cfg(argparse.Namespace(
        config_file=os.path.join(REPO, "configs", "quickstart.yaml"),
        opts=[*OPTS, "OUTPUT_DIR", str(tmp_path), *opts]), default_setup_fn=None)


@pytest.fixture(autouse=True)
def _datasets(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", os.environ.get(
        "DETECTRON2_DATASETS", os.path.join(REPO, "datasets")))


def test_num_classes_disagreeing_with_metadata(tmp_path):
    with pytest.raises(ValueError, match=r"NUM_CLASSES=5 but dataset 'd2seg_shapes_train' has 8"):
        _cfg(tmp_path, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5")


def test_empty_dataset_is_named(tmp_path):
    name = "d2seg_test_empty_dataset"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(stuff_classes=[str(i) for i in range(8)], ignore_label=255)
    cfg = _cfg(tmp_path, "DATASETS.TRAIN", f"('{name}',)")
    with pytest.raises((AssertionError, ValueError), match=name):
        Trainer.build_train_loader(cfg)


def test_crop_not_a_multiple_of_size_divisibility(tmp_path):
    with pytest.raises(ValueError, match=r"INPUT.CROP.SIZE=\[60, 64\] is not a multiple of "
                                         r"INPUT.SIZE_DIVISIBILITY=32"):
        _cfg(tmp_path, "INPUT.CROP.SIZE", "[60,64]", "INPUT.SIZE_DIVISIBILITY", "32")
    _cfg(tmp_path, "INPUT.CROP.SIZE", "[64,96]", "INPUT.SIZE_DIVISIBILITY", "32")  # fine


def test_slide_stride_larger_than_window(tmp_path):
    with pytest.raises(ValueError, match=r"TEST.STRIDE=\[80, 40\] is larger than TEST.CROP_SIZE"):
        _cfg(tmp_path, "TEST.MODE", "slide", "TEST.CROP_SIZE", "[64,64]", "TEST.STRIDE", "[80,40]")


def _trainer_with_forward(tmp_path, forward):
    trainer = Trainer(_cfg(tmp_path))
    trainer.resume_or_load(resume=False)
    trainer.model.forward = forward
    return trainer


def test_nan_loss_names_the_iteration_and_the_files(tmp_path):
    calls = []

    def forward(batch):
        calls.append(1)
        value = float("nan") if len(calls) == 2 else 1.0
        return {"loss_sem_seg": torch.tensor(value, requires_grad=True)}

    with pytest.raises(FloatingPointError) as info:
        _trainer_with_forward(tmp_path, forward).train()
    msg = str(info.value)
    assert "iteration=1" in msg or "at iteration 1" in msg
    assert "d2seg_shapes" in msg and ".jpg" in msg and re.search(r"\(3, 64, \d+\)", msg), msg


def test_out_of_memory_names_the_batch_shape(tmp_path):
    def forward(batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(torch.OutOfMemoryError) as info:
        _trainer_with_forward(tmp_path, forward).train()
    msg = str(info.value)
    assert "iteration 0" in msg and "batch of 2 images" in msg and "(3, 64, 64)" in msg, msg
    assert "SOLVER.IMS_PER_BATCH" in msg and "Tried to allocate" in msg
