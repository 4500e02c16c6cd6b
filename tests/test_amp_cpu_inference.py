"""Configs with fp16 training (SOLVER.AMP.ENABLED, DTYPE float16: mmseg's fp16 configs) run their
CPU inference in float32 -- evaluation, SemSegPredictor (demo) and TTA -- while bfloat16, which the
CPU supports, still autocasts."""
import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from common import tiny_cfg
from d2seg import SemSegPredictor
from d2seg.modeling import SemanticSegmentorWithTTA


def amp_opts(dtype):
    return ["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", dtype, "INPUT.TEST_IMG_SCALE", [48, 48]]


def classifier_dtypes(model):
    """Records the dtype of every decode-head classifier output (the last conv of the net)."""
    seen = []
    model.decode_head.conv_seg.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, 40 + 8 * i, 48), dtype=torch.uint8, generator=g)}
            for i in range(n)]


def test_fp16_config_evaluates_in_fp32_on_cpu():
    model = build_model(tiny_cfg(opts=amp_opts("float16"))).eval()
    assert model.speed.amp_dtype == "float16"  # the GPU still autocasts in float16
    plain = build_model(tiny_cfg()).eval()
    plain.load_state_dict(model.state_dict())
    seen = classifier_dtypes(model)
    with torch.no_grad():
        got = [r["sem_seg"] for r in model(images())]
        expected = [r["sem_seg"] for r in plain(images())]
    assert seen and set(seen) == {torch.float32}
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    # the multi-scale + flip test (TEST.AUG) goes through the same inference
    cfg = tiny_cfg(opts=amp_opts("float16") + ["TEST.AUG.ENABLED", True, "TEST.AUG.FLIP", True])
    seen.clear()
    with torch.no_grad():
        SemanticSegmentorWithTTA(cfg, model)([{"image": images(1)[0]["image"],
                                               "height": 40, "width": 48}])
    assert seen and set(seen) == {torch.float32}


def test_bfloat16_config_still_autocasts_on_cpu():
    model = build_model(tiny_cfg(opts=amp_opts("bfloat16"))).eval()
    seen = classifier_dtypes(model)
    with torch.no_grad():
        out = model(images(1))[0]["sem_seg"]
    assert set(seen) == {torch.bfloat16} and out.dtype == torch.float32


@pytest.mark.parametrize("tta", [False, True])
def test_predictor_of_an_fp16_config_predicts_in_fp32_on_cpu(tta):
    opts = ["TEST.AUG.ENABLED", tta]
    torch.manual_seed(0)
    fp16 = SemSegPredictor(tiny_cfg(opts=amp_opts("float16") + opts))
    torch.manual_seed(0)
    fp32 = SemSegPredictor(tiny_cfg(opts=["INPUT.TEST_IMG_SCALE", [48, 48]] + opts))
    seen = classifier_dtypes(fp16.model)
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    labels, probs = fp16(img, return_probs=True)
    labels32, probs32 = fp32(img, return_probs=True)
    assert seen and set(seen) == {torch.float32}
    assert torch.equal(labels, labels32) and torch.equal(probs, probs32)
