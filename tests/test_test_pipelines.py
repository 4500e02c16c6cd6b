"""mmseg's test pipelines in the zoo configs: for the 13 classic methods Cityscapes whole-image at
2048x1024 (slide 769x769 windows at 2049x1025 for the 769 configs), ADE20K / VOC keep-ratio resize
to 2048x512; every other config as mmseg's own config has it; the dataset each config names is
registered with the config's class count and label handling."""
import numpy as np
import pytest
import torch

from d2seg.data.datasets import dataset_metadata
from d2seg.data.mappers import SemSegDatasetMapper, dataset_reduce_zero_label

from common import CLASSIC, REPO_CONFIGS, get_d2seg_cfg

ZOO = sorted(p.relative_to(REPO_CONFIGS).as_posix() for p in REPO_CONFIGS.glob("*/*.yaml")
             if not p.parts[-2].startswith("_"))
EXPECTED = {  # the classic methods' dataset suffix of the stem -> (TEST.MODE, INPUT.TEST_IMG_SCALE, crop, stride)
    "769x769_cityscapes": ("slide", [2049, 1025], [769, 769], [513, 513]),
    "cityscapes": ("whole", [2048, 1024], None, None),
    "ade20k": ("whole", [2048, 512], None, None),
    "voc12aug": ("whole", [2048, 512], None, None),
}


def _from_mmseg(stem):
    """(mode, test scale, crop, stride) of mmseg's own config (the other datasets' configs)."""
    pytest.importorskip("mmseg")
    from mmseg_peer import mmseg_config

    c = mmseg_config(stem)
    # the occluded-face config has no data.test: mmseg tests (and d2seg tests) data.val
    aug = next(t for t in c.data.get("test", c.data.val).pipeline
               if t["type"] == "MultiScaleFlipAug")
    test_cfg = c.model.test_cfg
    slide = test_cfg.get("mode", "whole") == "slide"
    return (test_cfg.get("mode", "whole"), list(aug["img_scale"]),
            list(test_cfg["crop_size"]) if slide else None,
            list(test_cfg["stride"]) if slide else None)


def expected_for(stem):
    if stem.split("/")[0] not in CLASSIC:  # e.g. SegFormer's slide test at 1024x1024 windows
        return _from_mmseg(stem)
    kind = stem.rsplit("_", 1)[-1]
    if kind == "cityscapes" and "_769x769_" in stem:
        kind = "769x769_cityscapes"
    return EXPECTED[kind] if kind in EXPECTED else _from_mmseg(stem)


def test_zoo_is_there():
    assert len(ZOO) > 100


@pytest.mark.parametrize("rel", ZOO)
def test_zoo_config_test_pipeline(rel):
    cfg = get_d2seg_cfg(REPO_CONFIGS / rel)
    if rel.startswith("camvid/"):  # d2seg's own recipe: no mmseg config to follow
        mode, scale, crop, stride = cfg.TEST.MODE, list(cfg.INPUT.TEST_IMG_SCALE), None, None
    else:
        mode, scale, crop, stride = expected_for(rel[: -len(".yaml")])
    assert (cfg.TEST.MODE, list(cfg.INPUT.TEST_IMG_SCALE)) == (mode, scale)
    if crop:
        assert (list(cfg.TEST.CROP_SIZE), list(cfg.TEST.STRIDE)) == (crop, stride)
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        meta = dataset_metadata(name)  # Detectron2's names completed by d2seg's facts
        assert len(meta.stuff_classes) == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, name
        assert dataset_reduce_zero_label(cfg, [name]) == bool(meta.reduce_zero_label)


@pytest.mark.parametrize("rel,hw,expected", [
    ("pspnet/pspnet_r50-d8_512x1024_40k_cityscapes.yaml", (1024, 2048), (1024, 2048)),  # as is
    ("pspnet/pspnet_r50-d8_512x1024_40k_cityscapes.yaml", (256, 512), (1024, 2048)),
    ("pspnet/pspnet_r50-d8_769x769_40k_cityscapes.yaml", (1024, 2048), (1025, 2049)),
    ("pspnet/pspnet_r50-d8_512x512_80k_ade20k.yaml", (375, 500), (512, 683)),  # short side 512
    ("pspnet/pspnet_r50-d8_512x512_20k_voc12aug.yaml", (500, 333), (769, 512)),
    ("pspnet/pspnet_r50-d8_512x512_20k_voc12aug.yaml", (100, 1000), (205, 2048)),  # long 2048
])
def test_test_resize_keeps_ratio_and_reports_original_size(tmp_path, rel, hw, expected):
    from PIL import Image

    path = str(tmp_path / "img.png")
    Image.fromarray(np.zeros((*hw, 3), np.uint8)).save(path)
    cfg = get_d2seg_cfg(REPO_CONFIGS / rel)
    out = SemSegDatasetMapper(cfg, is_train=False)({"file_name": path})
    assert tuple(out["image"].shape[-2:]) == expected
    assert (out["height"], out["width"]) == hw  # the model returns logits at this size
    assert out["image"].dtype == torch.uint8
