"""An INPUT.CROP.SIZE that does not fit fails early, naming the key and the value, wherever training
starts (tools' check_config, the train mapper, Trainer); a crop larger than the image is padded, as
in mmseg."""
import numpy as np
import pytest
import torch

from detectron2.data import transforms as T
from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg, random_batch, tiny_cfg
from d2seg.data.mappers import SemSegDatasetMapper
from d2seg.data.mappers.transforms import build_train_augmentations
from d2seg.engine import Trainer
from d2seg.engine.trainer import check_config
from test_train_e2e import TINY

BAD = [
    ([96], "two positive ints"),  # was an IndexError in the crop
    ([96, 96, 96], "two positive ints"),  # the third value was silently ignored
    ([0, 96], "two positive ints"),  # was a 0-pixel crop
    ([-8, 96], "two positive ints"),  # was a crop of 1733 rows from a 200-row image
    ([96.0, 96.0], "two positive ints"),  # was a TypeError in the crop / the model's padding
    ([100, 100], "multiple of INPUT.SIZE_DIVISIBILITY=32"),
]


def crop_cfg(size, opts=()):
    return tiny_cfg(opts=["INPUT.CROP.ENABLED", True, "INPUT.CROP.SIZE", size, *opts])


@pytest.mark.parametrize("size,why", BAD, ids=[str(s) for s, _ in BAD])
def test_bad_crop_size_is_named_by_the_mapper_and_check_config(size, why):
    opts = ["INPUT.SIZE_DIVISIBILITY", 32] if "DIVISIBILITY" in why else []
    cfg = crop_cfg(size, opts)
    expected = rf"INPUT\.CROP\.SIZE={size}.*{why}".replace("[", r"\[")
    with pytest.raises(ValueError, match=expected):
        build_train_augmentations(cfg)
    with pytest.raises(ValueError, match=expected):
        SemSegDatasetMapper(cfg, is_train=True)
    with pytest.raises(ValueError, match=expected):
        check_config(cfg)


def test_trainer_fails_before_training_on_a_bad_crop_size(tmp_path):
    cfg = get_d2seg_cfg(REPO_CONFIGS / "quickstart.yaml",
                        [*TINY, "INPUT.CROP.SIZE", [64], "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ValueError, match=r"INPUT\.CROP\.SIZE=\[64\] must be two positive ints"):
        Trainer(cfg)


def test_disabled_crop_is_not_checked():
    build_train_augmentations(crop_cfg([0], ["INPUT.CROP.ENABLED", False]))


def test_crop_larger_than_the_image_is_padded_as_mmseg():
    cfg = crop_cfg([96, 128], ["INPUT.IMG_SCALE", [60, 40], "INPUT.RATIO_RANGE", [1.0, 1.0]])
    augs = T.AugmentationList(build_train_augmentations(cfg))
    label = np.random.default_rng(0).integers(0, 5, (40, 60)).astype(np.uint8)
    aug_input = T.AugInput(np.zeros((40, 60, 3), np.uint8), sem_seg=label)
    augs(aug_input)
    assert aug_input.image.shape[:2] == (40, 60)  # cropped to its own size, not enlarged
    model = build_model(cfg)
    seen = []
    model.backbone.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    losses = model(random_batch(2, 40, 60))  # padded to CROP.SIZE (ignored pixels), trains
    assert seen == [(96, 128)]
    assert all(torch.isfinite(v) for v in losses.values())
