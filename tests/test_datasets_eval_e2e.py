"""Each public dataset's miniature tree evaluates end to end through tools/train_net.py
--eval-only (a tiny randomly initialised model: the point is that the pipeline runs)."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from detectron2.engine import default_argument_parser

import dataset_trees as trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "MODEL.WEIGHTS", "", "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.AUX_HEAD.CONVS_DIM", "8",
    "INPUT.TEST_IMG_SCALE", "[32,32]", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TRAIN", "()",
]


def load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "tools", "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def eval_only(tmp_path, dataset, num_classes, *opts):
    args = default_argument_parser().parse_args([
        "--eval-only", "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), *TINY,
        "DATASETS.TEST", f"('{dataset}',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(num_classes),
        "OUTPUT_DIR", str(tmp_path / "out"), *opts,
    ])
    return load_train_net().main(args)


def check_metrics(res, tmp_path, dataset, classes, key="sem_seg", folder="inference"):
    m = res[key]
    assert all(0 <= m[k] <= 100 for k in ("mIoU", "fwIoU", "mACC", "pACC")), m
    per_class = [k for k in m if k.startswith("IoU-")]
    assert len(per_class) == classes
    with open(tmp_path / "out" / folder / dataset / "sem_seg_per_class.json") as f:
        assert len(json.load(f)["per_class"]) == classes


def test_cityscapes_eval_only(tmp_path):
    trees.make_cityscapes(tmp_path / "data", splits=(("val", 2),))
    with trees.registered_under(tmp_path / "data", "cityscapes"):
        res = eval_only(tmp_path, "cityscapes_fine_sem_seg_val", 19)
    check_metrics(res, tmp_path, "cityscapes_fine_sem_seg_val", 19)
    if importlib.util.find_spec("cityscapesscripts") is not None:  # the official script too
        assert set(res["cityscapes_sem_seg"]) == {"IoU", "iIoU", "IoU_sup", "iIoU_sup"}


def test_ade20k_raw_eval_only(tmp_path):
    trees.make_ade20k(tmp_path / "data")
    with trees.registered_under(tmp_path / "data", "ade20k"):
        res = eval_only(tmp_path, "ade20k_sem_seg_raw_val", 150, "INPUT.REDUCE_ZERO_LABEL", "True")
    check_metrics(res, tmp_path, "ade20k_sem_seg_raw_val", 150)
    # GT classes 0 ("other") is ignored; 1, 2, 150, 75 -> 0, 1, 149, 74: only those have an IoU
    defined = sorted(k for k, v in res["sem_seg"].items() if k.startswith("ACC-") and not math.isnan(v))
    assert len(defined) == 4


def test_voc_eval_only(tmp_path):
    trees.make_voc(tmp_path / "data")
    with trees.registered_under(tmp_path / "data", "voc"):
        res = eval_only(tmp_path, "voc_2012_sem_seg_val", 21, "TEST.MODE", "slide",
                        "TEST.CROP_SIZE", "[16,16]", "TEST.STRIDE", "[12,12]")
    check_metrics(res, tmp_path, "voc_2012_sem_seg_val", 21)


@pytest.mark.parametrize("dataset,classes", [("pascal_context_sem_seg_val", 60),
                                             ("pascal_context_59_sem_seg_val", 59)])
def test_pascal_context_eval_only(tmp_path, dataset, classes):
    trees.make_pascal_context(tmp_path / "data")
    with trees.registered_under(tmp_path / "data", "pascal_context"):
        res = eval_only(tmp_path, dataset, classes)
    check_metrics(res, tmp_path, dataset, classes)


def test_eval_only_with_tta_from_the_command_line(tmp_path):
    """$DETECTRON2_DATASETS -> registration at import, and --eval-only TEST.AUG.ENABLED True."""
    trees.make_ade20k(tmp_path / "data", n_train=0, n_val=2)
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "data"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--eval-only",
           "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), *TINY,
           "DATASETS.TEST", "('ade20k_sem_seg_raw_val',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "150",
           "OUTPUT_DIR", str(tmp_path / "out"), "TEST.AUG.ENABLED", "True",
           "TEST.AUG.RATIOS", "[0.5,1.0]", "TEST.AUG.FLIP", "True"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "test-time augmentation" in out and "copypaste: mIoU" in out
    assert os.path.isfile(tmp_path / "out" / "inference_TTA" / "ade20k_sem_seg_raw_val" /
                          "sem_seg_per_class.json")
