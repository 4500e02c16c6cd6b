"""An exported ONNX file evaluated with tools/evaluate_deployed.py gives train_net.py --eval-only's
numbers for the same weights on the built-in dataset; SemSegPredictor and demo.py run an exported
file (whole, slide, TTA); errors name the file or key."""
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

import d2seg
from common import REPO_CONFIGS, get_d2seg_cfg
from export_models import randomize_

pytest.importorskip("onnxruntime")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL = "d2seg_shapes_val"
SUBSET = "d2seg_shapes_val_first12"  # both evaluations in seconds on a busy 2-core machine
TINY = ["MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16, "MODEL.AUX_HEAD.CONVS_DIM", 8,
        "DATALOADER.NUM_WORKERS", 0, "INPUT.TEST_IMG_SCALE", [96, 96]]


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(opts, model.onnx): the narrowed quickstart config with random weights whose logits are
    O(1), saved as MODEL.WEIGHTS and exported with export_model.py --dynamic."""
    root = tmp_path_factory.mktemp("deployed")
    cfg = get_d2seg_cfg(REPO_CONFIGS / "quickstart.yaml", TINY)
    weights = str(root / "model.pth")
    torch.save({"model": randomize_(build_model(cfg)).state_dict()}, weights)
    opts = [*map(str, TINY), "MODEL.WEIGHTS", weights]
    assert _tool("export_model").main([
        "--config-file", str(REPO_CONFIGS / "quickstart.yaml"), "--format", "onnx", "--dynamic",
        "--output", str(root / "export"), *opts]) == 0
    return opts, str(root / "export" / "model.onnx")


def _register_subset():
    if SUBSET not in DatasetCatalog.list():
        DatasetCatalog.register(SUBSET, lambda: DatasetCatalog.get(VAL)[:12])
        meta = MetadataCatalog.get(VAL).as_dict()
        MetadataCatalog.get(SUBSET).set(**{k: v for k, v in meta.items() if k != "name"})


def _cfg(opts, *more):
    return get_d2seg_cfg(REPO_CONFIGS / "quickstart.yaml", [*opts, *more])


def test_evaluate_deployed_equals_eval_only(exported, tmp_path, capsys):
    opts, onnx = exported
    _register_subset()
    args = default_argument_parser().parse_args([
        "--eval-only", "--config-file", str(REPO_CONFIGS / "quickstart.yaml"), *opts,
        "DATASETS.TEST", f"('{SUBSET}',)", "OUTPUT_DIR", str(tmp_path / "eval_only")])
    expected = _tool("train_net").main(args)
    capsys.readouterr()
    got = _tool("evaluate_deployed").main([
        "--config-file", str(REPO_CONFIGS / "quickstart.yaml"), "--model", onnx,
        "--dataset", SUBSET, "--output", str(tmp_path / "deployed"), "--threads", "1", *opts])
    assert set(got) == {"sem_seg"} and set(got["sem_seg"]) == set(expected["sem_seg"])
    # the same pixels to float rounding (BN folded; ONNX Runtime sums in another order): a
    # flipped near-tie moves a class IoU by ~1e-3 points, a wrong resize or channel order by >1
    for key, value in expected["sem_seg"].items():
        assert got["sem_seg"][key] == pytest.approx(value, abs=0.01), key
    assert json.loads((tmp_path / "deployed" / "metrics.json").read_text()) == got
    out = capsys.readouterr().out
    assert "ms per image" in out and "1 threads" in out and "12 images" in out


def test_evaluate_deployed_runs_an_openvino_ir(exported, tmp_path, capsys):
    """An INT8 OpenVINO IR (export_model.py --int8-backend openvino) goes through the same
    evaluator; random weights leave near-ties, so its mIoU is only close to the fp32 file's."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from d2seg.export.openvino_int8 import quantize_openvino
    from d2seg.export.quantize import CalibrationImages, calibration_dicts

    opts, onnx = exported
    _register_subset()
    reader = CalibrationImages(_cfg(opts), calibration_dicts(VAL, 4), [None, 3, None, None])
    ir = str(tmp_path / "model_int8.xml")
    settings = quantize_openvino(onnx, ir, reader, keep_float=[])
    assert settings["backend"] == "openvino" and os.path.isfile(ir[:-4] + ".bin")
    results = {}
    for name, path in (("fp32", onnx), ("int8", ir)):
        results[name] = _tool("evaluate_deployed").main([
            "--config-file", str(REPO_CONFIGS / "quickstart.yaml"), "--model", path,
            "--dataset", SUBSET, "--output", str(tmp_path / name), "--threads", "1", *opts])
    assert set(results["int8"]["sem_seg"]) == set(results["fp32"]["sem_seg"])
    assert abs(results["int8"]["sem_seg"]["mIoU"] - results["fp32"]["sem_seg"]["mIoU"]) < 5
    assert "OpenVINO (CPU, 1 threads)" in capsys.readouterr().out


def test_evaluate_deployed_errors_name_the_file(exported, tmp_path):
    opts, _ = exported
    tool = _tool("evaluate_deployed")
    base = ["--config-file", str(REPO_CONFIGS / "quickstart.yaml"), "--output", str(tmp_path),
            *opts]
    with pytest.raises(FileNotFoundError, match="missing.onnx: no such ONNX file"):
        tool.main(["--model", str(tmp_path / "missing.onnx"), *base])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="bad.onnx: not an ONNX model"):
        tool.main(["--model", str(bad), *base])


def test_predictor_runs_an_exported_file(exported):
    """SemSegPredictor(cfg, model_file=...) gives the PyTorch predictor's labels (where the two
    best logits decide), in whole and slide mode and with TTA; a class count that differs from
    the config's is named."""
    opts, onnx = exported
    rgb = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    for more in ([], ["TEST.MODE", "slide", "TEST.CROP_SIZE", [48, 64], "TEST.STRIDE", [32, 40]],
                 ["TEST.AUG.ENABLED", True, "TEST.AUG.RATIOS", [0.75, 1.0]]):
        cfg = _cfg(opts, *more)
        labels, probs = d2seg.SemSegPredictor(cfg)(rgb, "RGB", return_probs=True)
        got = d2seg.SemSegPredictor(cfg, model_file=onnx, threads=1)(rgb, "RGB")
        top2 = probs.topk(2, dim=0).values
        decided = top2[0] - top2[1] > 1e-4
        assert decided.double().mean() > 0.99, more
        assert torch.equal(got[decided], labels[decided]), more
    with pytest.raises(ValueError, match=r"model.onnx outputs 8 classes but the config has "
                                         r"MODEL.SEM_SEG_HEAD.NUM_CLASSES=5"):
        d2seg.SemSegPredictor(_cfg(opts, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 5,
                                   "DATASETS.TEST", "()", "DATASETS.TRAIN", "()"),
                              model_file=onnx)
    with pytest.raises(ValueError, match="is an exported graph, not weights"):
        d2seg.SemSegPredictor(_cfg(opts, "MODEL.WEIGHTS", onnx))


def test_demo_runs_an_exported_file(exported, tmp_path):
    opts, onnx = exported
    written = _tool("demo").main([
        "--config-file", str(REPO_CONFIGS / "quickstart.yaml"), "--dataset", VAL, "--max", "2",
        "--model", onnx, "--output", str(tmp_path), *opts])
    assert len(written) == 2 and all(os.path.isfile(f) for f in written)
    # the exported file given as MODEL.WEIGHTS runs the same way (the demo says so)
    again = _tool("demo").main([
        "--config-file", str(REPO_CONFIGS / "quickstart.yaml"), "--dataset", VAL, "--max", "2",
        "--output", str(tmp_path / "as_weights"), *opts, "MODEL.WEIGHTS", onnx])
    assert len(again) == 2
    for a, b in zip(written, again):
        assert np.array_equal(cv2.imread(a), cv2.imread(b))


def test_checkpoint_loading_an_exported_file_says_what_runs_it(exported):
    from d2seg.checkpoint.convert import read_checkpoint_file

    with pytest.raises(RuntimeError, match=r"model.onnx: .*an exported ONNX graph, not weights: "
                                           r"run it with tools/evaluate_deployed.py --model"):
        read_checkpoint_file(exported[1])
