"""Test-time augmentation (TEST.AUG): SemanticSegmentorWithTTA + SemSegTTAMapper."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from detectron2.modeling import build_model

from d2seg.data.mappers import SemSegDatasetMapper, SemSegTTAMapper
from d2seg.modeling import SemanticSegmentorWithTTA

import common
from mmseg_peer import randomize_


def tiny_model(*opts):
    cfg = common.tiny_cfg(aux=False, opts=["INPUT.TEST_IMG_SCALE", [48, 40], *opts])
    model = build_model(cfg)
    randomize_(model)  # outputs far from uniform, so that asymmetries show
    return cfg, model.eval()


def write_image(tmp_path, img, name="img.png"):
    path = str(tmp_path / name)
    Image.fromarray(img).save(path)
    return path


def random_image(h=37, w=53, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_one_scale_no_flip_equals_plain_inference(tmp_path, mode):
    cfg, model = tiny_model("TEST.MODE", mode, "TEST.CROP_SIZE", [32, 32], "TEST.STRIDE", [24, 24],
                            "TEST.AUG.RATIOS", [1.0], "TEST.AUG.FLIP", False)
    path = write_image(tmp_path, random_image())
    plain_in = SemSegDatasetMapper(cfg, is_train=False)({"file_name": path})
    assert tuple(plain_in["image"].shape[-2:]) != (37, 53)  # the test mapper resized it
    orig_in = SemSegDatasetMapper(cfg, is_train=False, augmentations=[])({"file_name": path})
    with torch.no_grad():
        logits = model([plain_in])[0]["sem_seg"]
        probs = SemanticSegmentorWithTTA(cfg, model)([orig_in])[0]["sem_seg"]
    assert probs.shape == logits.shape == (5, 37, 53)
    torch.testing.assert_close(probs, F.softmax(logits, dim=0), rtol=0, atol=1e-6)
    assert torch.equal(probs.argmax(0), logits.argmax(0))


def test_views_follow_mmseg_multiscale_flip():
    mapper = SemSegTTAMapper(img_scale=[2048, 512], ratios=[0.5, 1.0, 1.75], flip=True)
    image = torch.from_numpy(random_image(30, 40).transpose(2, 0, 1).astype(np.float32))
    views = mapper({"image": image, "height": 30, "width": 40})
    # (w, h) = rescale_size(40, 30, (int(2048 r), int(512 r))): the short side hits 512 r
    sizes = [tuple(v["image"].shape[-2:]) for v in views]
    assert sizes == [(256, 341), (256, 341), (512, 683), (512, 683), (896, 1195), (896, 1195)]
    assert [v["flip"] for v in views] == [False, True] * 3
    assert all((v["height"], v["width"]) == (30, 40) for v in views)
    assert torch.equal(views[1]["image"], views[0]["image"].flip(-1))
    # no img_scale: the image's own size x ratio
    views = SemSegTTAMapper(img_scale=[], ratios=[0.5, 1.0], flip=False)(
        {"image": image, "height": 30, "width": 40})
    assert [tuple(v["image"].shape[-2:]) for v in views] == [(15, 20), (30, 40)]
    assert torch.equal(views[1]["image"], image)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flip_tta_is_flip_invariant(mode):
    cfg, model = tiny_model("TEST.MODE", mode, "TEST.CROP_SIZE", [32, 32], "TEST.STRIDE", [24, 24],
                            "INPUT.TEST_IMG_SCALE", [], "TEST.AUG.RATIOS", [1.0], "TEST.AUG.FLIP", True)
    tta = SemanticSegmentorWithTTA(cfg, model)
    half = random_image(32, 20, seed=1)
    sym = np.concatenate([half, half[:, ::-1]], axis=1)  # a mirror-symmetric image
    x = random_image(32, 40, seed=2)

    def run(img):
        t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32))
        return tta([{"image": t, "height": img.shape[0], "width": img.shape[1]}])[0]["sem_seg"]

    with torch.no_grad():
        p_sym = run(sym)
        plain = F.softmax(model([{"image": torch.from_numpy(
            np.ascontiguousarray(sym.transpose(2, 0, 1)).astype(np.float32))}])[0]["sem_seg"], 0)
        p_x, p_flipped = run(x), run(x[:, ::-1])
    assert (plain - plain.flip(-1)).abs().max() > 1e-3  # the model itself is not symmetric
    torch.testing.assert_close(p_sym, p_sym.flip(-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(p_x, p_flipped.flip(-1), rtol=0, atol=1e-6)  # equivariance
    torch.testing.assert_close(p_x.sum(0), torch.ones(32, 40), rtol=0, atol=1e-5)


def test_multiscale_flip_averages_views():
    cfg, model = tiny_model("TEST.AUG.RATIOS", [0.5, 1.0, 1.5], "TEST.AUG.FLIP", True)
    img = random_image(30, 44, seed=3)
    inp = {"image": torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32)), "height": 30,
           "width": 44}
    tta = SemanticSegmentorWithTTA(cfg, model)
    with torch.no_grad():
        probs = tta([inp])[0]["sem_seg"]
        expected = 0
        for view in SemSegTTAMapper(cfg)(inp):
            p = F.softmax(model([view])[0]["sem_seg"], 0)
            expected = expected + (p.flip(-1) if view["flip"] else p)
    torch.testing.assert_close(probs, expected / 6, rtol=0, atol=1e-6)
