"""Property tests (hypothesis) of the training data path: for random image sizes, label maps,
scales, ratio ranges and crop sizes, the mapper never crashes on valid input, keeps image and
label aligned and of one size, never invents class ids and keeps 255 as ignore."""
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d2seg.data.mappers import SemSegDatasetMapper

from test_data_mapper import NUM_CLASSES, PALETTE, cfg_for, decode, interior, write_sample

FAST = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
IDS = sorted(PALETTE)  # 0..4 and 255


@st.composite
def samples(draw):
    h, w = draw(st.integers(4, 96)), draw(st.integers(4, 96))
    block = draw(st.integers(1, 12))
    ids = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=len(IDS), unique=True))
    seed = draw(st.integers(0, 2**16))
    grid = np.random.default_rng(seed).choice(ids, (h // block + 1, w // block + 1))
    label = grid.repeat(block, 0).repeat(block, 1)[:h, :w].astype(np.uint8)
    return label, block


@st.composite
def pipelines(draw):
    long_, short = draw(st.integers(8, 128)), draw(st.integers(8, 128))
    lo = draw(st.floats(0.25, 2.0))
    ratio = [] if draw(st.booleans()) else [lo, lo + draw(st.floats(0.0, 1.5))]
    crop = [draw(st.integers(4, 96)), draw(st.integers(4, 96))]
    return ["INPUT.IMG_SCALE", [max(long_, short), min(long_, short)], "INPUT.RATIO_RANGE", ratio,
            "INPUT.CROP.SIZE", crop, "INPUT.CROP.ENABLED", draw(st.booleans()),
            "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", draw(st.sampled_from([0.75, 1.0])),
            "INPUT.RANDOM_FLIP", draw(st.sampled_from(["horizontal", "vertical", "none"]))]


def _map(label, opts, seed):
    with tempfile.TemporaryDirectory() as d:
        mapper = SemSegDatasetMapper(cfg_for(opts), is_train=True)
        np.random.seed(seed)
        return mapper(write_sample(Path(d), label)), mapper


@FAST
@given(samples(), pipelines(), st.integers(0, 2**16))
def test_geometric_pipeline_keeps_alignment_and_ids(sample, opts, seed):
    label, block = sample
    out, _ = _map(label, opts + ["INPUT.PHOTOMETRIC_DISTORTION", False], seed)
    img, seg = out["image"], out["sem_seg"].numpy()
    assert img.shape[1:] == seg.shape and img.shape[0] == 3 and min(seg.shape) >= 1
    crop = dict(zip(opts[::2], opts[1::2]))
    if crop["INPUT.CROP.ENABLED"]:
        assert seg.shape[0] <= crop["INPUT.CROP.SIZE"][0] and seg.shape[1] <= crop["INPUT.CROP.SIZE"][1]
    assert set(np.unique(seg)) <= set(np.unique(label))  # no invented ids; 255 stays 255
    assert (out["height"], out["width"]) == label.shape
    # alignment: away from label borders the image colour tells the label (bilinear blends only
    # across borders); checked where the 5x5 neighbourhood is one label
    decoded, _ = decode(img)
    inner = interior(seg, r=2)
    if block >= 4:
        np.testing.assert_array_equal(decoded[inner], seg[inner])


@FAST
@given(samples(), pipelines(), st.integers(0, 2**16))
def test_full_pipeline_never_crashes_on_valid_input(sample, opts, seed):
    label, _ = sample
    out, mapper = _map(label, opts + ["INPUT.PHOTOMETRIC_DISTORTION", True], seed)
    img, seg = out["image"], out["sem_seg"]
    assert img.dtype == torch.uint8 and img.shape[1:] == seg.shape  # uint8 to the device
    assert float(img.min()) >= 0 and float(img.max()) <= 255
    ids = set(np.unique(seg.numpy()))
    assert ids <= set(np.unique(label)) and ids <= set(range(NUM_CLASSES)) | {255}
