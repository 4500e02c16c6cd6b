"""d2seg.SemSegPredictor: the label map of tools/train_net.py --eval-only's model and loader on
the built-in dataset, BGR/RGB input, probabilities, TTA, bad input."""
import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

import d2seg
from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import SegCheckpointer
from d2seg.engine import Trainer
from export_models import randomize_

VAL = "d2seg_shapes_val"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """The quickstart config (narrowed) with random weights whose logits are O(1), saved as
    MODEL.WEIGHTS like a trained checkpoint."""
    cfg = get_d2seg_cfg(REPO_CONFIGS / "quickstart.yaml", [
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.AUX_HEAD.CONVS_DIM", 8,
        "DATALOADER.NUM_WORKERS", 0])
    model = randomize_(build_model(cfg))
    path = str(tmp_path_factory.mktemp("predictor") / "model.pth")
    torch.save({"model": model.state_dict()}, path)
    cfg.MODEL.WEIGHTS = path
    return cfg


def _decided(logits, tol=1e-4):
    top2 = logits.topk(2, dim=0).values
    return top2[0] - top2[1] > tol


def test_predictor_equals_eval_only_on_builtin_dataset(cfg):
    """Same model and test pipeline as train_net.py --eval-only (Trainer.build_model, the
    checkpointer, Trainer.build_test_loader); the predictor folds BN, so labels must agree
    wherever the eval model's two best logits are more than 1e-4 apart."""
    model = Trainer.build_model(cfg).eval()
    SegCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    predictor = d2seg.SemSegPredictor(cfg)
    files = {d["file_name"] for d in DatasetCatalog.get(VAL)[:4]}
    seen = 0
    for inputs in Trainer.build_test_loader(cfg, VAL):
        x = inputs[0]
        if x["file_name"] not in files:
            continue
        with torch.no_grad():
            logits = model(inputs)[0]["sem_seg"]
        bgr = read_image(x["file_name"], format="BGR")
        labels = predictor(bgr)  # BGR by default, like DefaultPredictor
        assert labels.shape == logits.shape[1:] == (x["height"], x["width"])
        decided = _decided(logits)
        assert decided.double().mean() > 0.99
        assert torch.equal(labels[decided], logits.argmax(0)[decided])
        seen += 1
        if seen == len(files):
            break
    assert seen == len(files)


def test_rgb_input_probabilities_and_tta(cfg):
    predictor = d2seg.SemSegPredictor(cfg)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    labels, probs = predictor(rgb, input_format="RGB", return_probs=True)
    assert labels.dtype == torch.int64 and labels.shape == (37, 53)
    assert probs.shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 37, 53)
    assert torch.allclose(probs.sum(0), torch.ones(37, 53), atol=1e-5)
    assert torch.equal(probs.argmax(0), labels)
    assert torch.equal(predictor(np.ascontiguousarray(rgb[:, :, ::-1])), labels)  # BGR
    tta_cfg = cfg.clone()
    tta_cfg.merge_from_list(["TEST.AUG.ENABLED", True, "TEST.AUG.RATIOS", [0.75, 1.0]])
    tta = d2seg.SemSegPredictor(tta_cfg)
    labels, probs = tta(rgb, input_format="RGB", return_probs=True)
    assert labels.shape == (37, 53) and torch.allclose(probs.sum(0), torch.ones(37, 53), atol=1e-5)


def test_predictor_default_path_is_fused_and_bad_input_is_named(cfg):
    predictor = d2seg.SemSegPredictor(cfg)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for m in predictor.model.modules())
    assert not predictor.model.training
    with pytest.raises(ValueError, match="uint8"):
        predictor(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"H x W x 3.*\(8, 8\)"):
        predictor(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="'YUV'"):
        predictor(np.zeros((8, 8, 3), np.uint8), input_format="YUV")



def test_predictor_fused_attention_within_1e4_of_plain_model(tmp_path):
    """The default path (BN folded, fused attention) against the plain model's logits."""
    from export_models import tiny_method_cfg, tiny_model

    plain = tiny_model("nonlocal")
    path = str(tmp_path / "nl.pth")
    torch.save({"model": plain.state_dict()}, path)
    cfg = tiny_method_cfg("nonlocal", ["INPUT.TEST_IMG_SCALE", [], "MODEL.WEIGHTS", path])
    predictor = d2seg.SemSegPredictor(cfg)
    assert any(getattr(m, "fused_attention", False) for m in predictor.model.modules())
    rgb = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    labels, probs = predictor(rgb, input_format="RGB", return_probs=True)
    with torch.no_grad():
        logits = plain([{"image": torch.from_numpy(rgb).permute(2, 0, 1).float()}])[0]["sem_seg"]
    assert (probs - logits.softmax(0)).abs().max() < 1e-4
    decided = _decided(logits)
    assert torch.equal(labels[decided], logits.argmax(0)[decided])
