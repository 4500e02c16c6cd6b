"""Multi-scale + flip test: d2seg's SemanticSegmentorWithTTA vs mmseg's aug_test (same weights,
same image, mmseg's own test pipeline)."""
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from d2seg.data.mappers import SemSegDatasetMapper
from d2seg.modeling import SemanticSegmentorWithTTA

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

SCALE = (64, 48)  # mmseg img_scale (w, h) = d2seg INPUT.TEST_IMG_SCALE (long, short)
CROP, STRIDE = (48, 48), (40, 40)  # slide windows


# (slide mode: the same wrapper around the model's slide inference, whose parity the model tests
# check and whose TTA is checked against plain inference in tests/test_tta.py; too slow here)
# divisor: mmseg's ResizeToMultiple after each view's Resize (the occluded-face config's test)
# min_size: mmseg's Resize(min_size=...) in the views (BEiT's / MAE's _ms tests), on a wide and
# a tall image (the ratio-0.5 view's short side, 24, goes up to 40; the long side is then free)
@pytest.mark.parametrize("mode,ratios,divisor,min_size,hw", [
    ("whole", [0.5, 1.0, 1.5], 0, 0, (45, 61)), ("whole", [0.5, 1.0, 1.5], 32, 0, (45, 61)),
    ("whole", [0.5, 1.0, 1.5], 0, 40, (45, 61)), ("whole", [0.5, 1.0, 1.5], 0, 40, (61, 45))])
def test_aug_test_matches_mmseg(tmp_path, mode, ratios, divisor, min_size, hw):
    mm_cfg = mmseg_peer.mmseg_config("fcn/fcn_r50-d8_512x1024_40k_cityscapes")
    mm_cfg.model.test_cfg.update(mode=mode, crop_size=CROP, stride=STRIDE)
    ref = mmseg_peer.build_mmseg_model(mm_cfg)
    path = str(tmp_path / "img.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)

    from mmseg.datasets.pipelines import Compose

    transforms = [dict(type="Resize", keep_ratio=True, min_size=min_size or None)]
    if divisor:
        transforms.append(dict(type="ResizeToMultiple", size_divisor=divisor))
    transforms += [dict(type="RandomFlip"), dict(type="Normalize", **mm_cfg.img_norm_cfg),
                   dict(type="ImageToTensor", keys=["img"]), dict(type="Collect", keys=["img"])]
    pipeline = Compose([
        dict(type="LoadImageFromFile"),
        dict(type="MultiScaleFlipAug", img_scale=SCALE, img_ratios=ratios, flip=True,
             transforms=transforms),
    ])
    data = pipeline(dict(img_info=dict(filename=path), img_prefix=None))
    with torch.no_grad():
        expected = ref.aug_test_logits([im[None] for im in data["img"]],
                                       [[m.data] for m in data["img_metas"]])[0]

    cfg = get_d2seg_cfg(REPO_CONFIGS / "_base_/models/fcn_r50-d8.yaml", [
        "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.AUX_HEAD.NORM", "BN",
        "INPUT.TEST_IMG_SCALE", list(SCALE), "TEST.AUG.ENABLED", True, "TEST.AUG.RATIOS", ratios,
        "TEST.AUG.FLIP", True, "TEST.MODE", mode, "TEST.CROP_SIZE", list(CROP),
        "TEST.STRIDE", list(STRIDE), "INPUT.TEST_SIZE_DIVISOR", divisor,
        "TEST.AUG.MIN_SIZE", min_size,
    ])
    model = build_model(cfg).eval()
    missing, unexpected = model.load_state_dict(convert_mmseg_state_dict(ref.state_dict()), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    inp = SemSegDatasetMapper(cfg, is_train=False, augmentations=[])({"file_name": path})
    with torch.no_grad():
        got = SemanticSegmentorWithTTA(cfg, model)([inp])[0]["sem_seg"].numpy()
    assert got.shape == expected.shape == (19, *hw)
    if min_size:  # every view's short side is at least min_size
        assert min(min(m.data["img_shape"][:2]) for m in data["img_metas"]) == min_size
    if divisor:  # the views were resized to multiples of it
        assert all(m.data["img_shape"][0] % divisor == 0 for m in data["img_metas"])
    assert expected.max() - expected.min() > 0.1  # not uniform
    print(f"{mode}: max abs diff of the averaged probabilities {np.abs(got - expected).max():.2e}")
    assert np.abs(got - expected).max() < 1e-5
    assert (got.argmax(0) == expected.argmax(0)).all()
