"""Every method learns: each of the 13 methods, in a small variant, is trained from scratch by
d2seg's Trainer (Detectron2's training loop, the real train mapper, SGD and poly schedule) and
must then segment clearly better than a blind model that predicts the most frequent class of the
training labels everywhere, both scored by d2seg's SemSegEvaluator.

The models start from ``configs/_base_/models/<method>.yaml`` with the quickstart's dataset, input
and solver settings (configs/quickstart.yaml), made small: ResNet-18-V1c-D8 with stage widths
16-128 (the quickstart's 32-256 halved), or HRNet-W18-Small (2 blocks per branch) with branch
widths 8-64 and one HR module per stage for FCN-HRNet and OCRNet; decode heads' CONVS_DIM 32
(HRNet FCN heads: the sum of the branch widths, as mmseg's 270; OCR head 64) and the
method-specific channels reduced alike.

What is learned and scored is a fixed handful of d2seg_shapes *training* images, not
d2seg_shapes_val: from scratch, d2seg_shapes is not learned to a clear margin within this file's
budget (~10-15 s of one CPU core per method). Measured for FCN at these widths, on val (blind
8.8), with the dataset's version 2 and the quickstart's former 96 px scale: 8.8 after 150
iterations of 64 px crops, 11.7 after 300, 10.5 after 600, 12.8 after 400 iterations of 96 px
crops (the quickstart itself, at widths 32-256, had ~34 after 800 of 1600 iterations).
Fitting a few images still runs everything a method has (random rescale, crop, flip and
photometric distortion, losses of every head, backward through backbone and heads; whole-image
inference resized back to the label size) and a model that has not learned stays exactly at the
blind score (FCN after 10 or 40 iterations: 8.53 = blind).
"""
import os
import time

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.engine import Trainer
from d2seg.engine.trainer import check_config
from d2seg.evaluation import SemSegEvaluator
from d2seg.data.image_io import read_label

NUM_IMAGES = 8  # training images fitted and scored (evenly spaced over d2seg_shapes_train)
ITERS = 150
CROP = 64
RATIO_RANGE = [0.75, 1.5]  # the quickstart's [0.5, 2.0] narrowed: fewer crops mostly padding
# A method passes with mIoU >= RATIO x blind and >= blind + POINTS. Blind is 8.4 on these
# images (threshold 13.4); measured with SEED 0 (dataset version 4, the quickstart's 128 px
# scale), every method got 19.4-30.2 (2.3-3.6 x blind); with version 2, SEED 0-3: 17.6-37.6.
RATIO = 1.5
POINTS = 5.0

W = 16  # ResNet stem / res2 width: stages 16-32-64-128
C = 32  # decode heads' CONVS_DIM (auxiliary FCN: C // 2)
HR_BRANCHES = [8, 16, 32, 64]


def _r18(*opts):
    return ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.NORM", "BN",
            "MODEL.RESNETS.STEM_OUT_CHANNELS", W, "MODEL.RESNETS.RES2_OUT_CHANNELS", W,
            "MODEL.SEM_SEG_HEAD.CONVS_DIM", C,
            "MODEL.AUX_HEAD.NORM", "BN", "MODEL.AUX_HEAD.CONVS_DIM", C // 2, *opts]


def _hr18s(fcn_node, *opts):
    """HRNet-W18-Small (2 blocks per branch) with narrow branches and one module per stage; the
    FCN head on the concatenated branches is as wide as they are (as mmseg's 270 = 18+...+144)."""
    return ["MODEL.HRNET.NORM", "BN", "MODEL.HRNET.STAGE1_CHANNELS", 16,
            "MODEL.HRNET.BRANCH_CHANNELS", HR_BRANCHES, "MODEL.HRNET.NUM_MODULES", [1, 1, 1, 1],
            f"{fcn_node}.NORM", "BN", f"{fcn_node}.CONVS_DIM", sum(HR_BRANCHES), *opts]


# ASPP dilations scaled to 8-12 px feature maps (mmseg's 12/24/36 are for 64-128 px ones);
# PSANet's window covers the shrunk feature map, as mmseg's 97 x 97 does at 769 px crops.
ASPP = ["MODEL.ASPP_HEAD.DILATIONS", [1, 2, 4, 6]]
METHODS = {
    "fcn": ("fcn_r50-d8", _r18()),
    "pspnet": ("pspnet_r50-d8", _r18()),
    "psanet": ("psanet_r50-d8", _r18("MODEL.PSA_HEAD.MASK_SIZE", [15, 15])),
    "deeplabv3": ("deeplabv3_r50-d8", _r18(*ASPP)),
    "deeplabv3plus": ("deeplabv3plus_r50-d8", _r18(*ASPP, "MODEL.ASPP_HEAD.C1_CHANNELS", 12)),
    "upernet": ("upernet_r50", _r18()),
    "fcn_hrnet": ("fcn_hr18s", _hr18s("MODEL.SEM_SEG_HEAD")),
    "gcnet": ("gcnet_r50-d8", _r18()),
    "nonlocal": ("nonlocal_r50-d8", _r18()),
    "ccnet": ("ccnet_r50-d8", _r18()),
    "danet": ("danet_r50-d8", _r18("MODEL.DA_HEAD.PAM_CHANNELS", 8)),
    "ann": ("ann_r50-d8", _r18("MODEL.ANN_HEAD.PROJECT_CHANNELS", 16)),
    "ocrnet_hrnet": ("ocrnet_hr18s", _hr18s(
        "MODEL.CASCADE_HEAD", "MODEL.SEM_SEG_HEAD.CONVS_DIM", 2 * C,
        "MODEL.OCR_HEAD.OCR_CHANNELS", C)),
}


def fit_set(num_images=NUM_IMAGES) -> str:
    """Registers (once) and returns a dataset of ``num_images`` d2seg_shapes_train images, evenly
    spaced, with the metadata of d2seg_shapes_train."""
    src = "d2seg_shapes_train"
    name = f"{src}_every_{num_images}"
    if name not in DatasetCatalog.list():
        def dicts():
            all_dicts = DatasetCatalog.get(src)
            return all_dicts[:: len(all_dicts) // num_images][:num_images]
        DatasetCatalog.register(name, dicts)
        meta = MetadataCatalog.get(src).as_dict()
        meta.pop("name")
        MetadataCatalog.get(name).set(**meta)
    return name


def blind_baseline(dataset: str):
    """(most frequent class of the dataset's labels, mIoU of predicting it everywhere), with the
    same evaluator as the trained models."""
    dicts = DatasetCatalog.get(dataset)
    meta = MetadataCatalog.get(dataset)
    num_classes, ignore = len(meta.stuff_classes), meta.ignore_label
    counts = np.zeros(num_classes, np.int64)
    for d in dicts:
        label = read_label(d["sem_seg_file_name"])
        counts += np.bincount(label[label != ignore].ravel(), minlength=num_classes)[:num_classes]
    cls = int(counts.argmax())
    evaluator = SemSegEvaluator(dataset, distributed=False)
    evaluator.reset()
    for d in dicts:
        h, w = read_label(d["sem_seg_file_name"]).shape
        logits = torch.zeros(num_classes, h, w)
        logits[cls] = 1
        evaluator.process([d], [{"sem_seg": logits}])
    return cls, evaluator.evaluate()["sem_seg"]["mIoU"]


@pytest.fixture(scope="module")
def blind():
    dataset = fit_set()
    cls, miou = blind_baseline(dataset)
    assert 0 < miou < 20, miou  # one class right at most: background IoU / 8 classes
    return dataset, cls, miou


def method_cfg(method: str, dataset: str, output_dir: str, seed: int = 0, iters: int = ITERS):
    yaml, opts = METHODS[method]
    quick = get_d2seg_cfg(REPO_CONFIGS / "quickstart.yaml")
    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models" / f"{yaml}.yaml")
    for node in ("DATASETS", "INPUT", "SOLVER"):  # the quickstart's data, input and solver
        cfg[node] = quick[node].clone()
    cfg.merge_from_list([
        "MODEL.SEM_SEG_HEAD.NORM", "BN",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", quick.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        *opts,
        "DATASETS.TRAIN", (dataset,), "DATASETS.TEST", (),
        "INPUT.CROP.SIZE", [CROP, CROP], "INPUT.RATIO_RANGE", RATIO_RANGE,
        "SOLVER.MAX_ITER", iters, "SOLVER.CHECKPOINT_PERIOD", 10 * iters,
        "TEST.EVAL_PERIOD", 0, "DATALOADER.NUM_WORKERS", 0,
        "SEED", seed, "OUTPUT_DIR", output_dir,
    ])
    cfg.freeze()
    check_config(cfg)
    return cfg


def train_and_evaluate(method: str, dataset: str, output_dir: str, seed: int = 0,
                       iters: int = ITERS):
    """Trains ``method`` on ``dataset`` with d2seg's Trainer, evaluates it on ``dataset``;
    returns (the evaluator's sem_seg results, seconds spent)."""
    cfg = method_cfg(method, dataset, output_dir, seed, iters)
    start = time.perf_counter()
    torch.manual_seed(seed)  # weight init
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = inference_on_dataset(
        trainer.model, Trainer.build_test_loader(cfg, dataset),
        Trainer.build_evaluator(cfg, dataset, os.path.join(output_dir, "inference")),
    )["sem_seg"]
    return results, time.perf_counter() - start


@pytest.mark.parametrize("method", list(METHODS))
def test_method_learns(method, blind, tmp_path):
    dataset, blind_class, blind_miou = blind
    res, seconds = train_and_evaluate(method, dataset, str(tmp_path))
    miou = res["mIoU"]
    per_class = {k[4:]: round(float(v), 1) for k, v in res.items() if k.startswith("IoU-")}
    print(f"\n{method}: mIoU {miou:.2f} vs blind {blind_miou:.2f} (class {blind_class} "
          f"everywhere) in {seconds:.1f} s; per class {per_class}")
    assert miou >= RATIO * blind_miou and miou >= blind_miou + POINTS, (
        f"{method} after {ITERS} iterations: mIoU {miou:.2f}, blind {blind_miou:.2f}; "
        f"per-class IoU {per_class}"
    )
