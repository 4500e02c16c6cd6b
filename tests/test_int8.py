"""export_model.py --int8: a tiny random-weight FCN quantised (ONNX Runtime, static QDQ) on a few
images of the built-in d2seg_shapes_val through the test pipeline; the tool's files, export.json's
int8 entry and its errors; the calibration images are the test mapper's."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog

from common import REPO_CONFIGS
from export_models import _HEAD, _RESNET, METHODS, tiny_model

pytest.importorskip("onnxruntime")

VAL = "d2seg_shapes_val"


def _args(out, weights=None, extra=(), opts=()):
    """The tiny FCN at a dynamic 64 x 96, calibrated on 4 images of VAL, checked on 3 others."""
    yaml, fcn = METHODS["fcn"]
    cfg_opts = [*_RESNET, *_HEAD, *fcn, "INPUT.CROP.SIZE", [64, 96],
                "INPUT.TEST_IMG_SCALE", [128, 128], *opts]
    if weights:
        cfg_opts += ["MODEL.WEIGHTS", weights]
    return ["--config-file", str(REPO_CONFIGS / f"_base_/models/{yaml}.yaml"), "--format", "onnx",
            "--output", str(out), "--height", "64", "--width", "96", "--dynamic", "--int8",
            "--calib-dataset", VAL, "--calib-images", "4", "--int8-check-images", "3", *extra,
            *map(str, cfg_opts)]


def _run(argv):
    import export_model

    return export_model.main(argv)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random weights with O(1) logits (tiny_model's), saved like a checkpoint."""
    path = tmp_path_factory.mktemp("int8") / "tiny_fcn.pth"
    torch.save({"model": tiny_model("fcn").state_dict()}, path)
    return str(path)


def test_int8_export_writes_both_files_and_the_agreement(tmp_path, weights, capsys, monkeypatch):
    import onnx

    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may be written where the tool is run from
    assert _run(_args(out, weights, ["--int8-latency", "1"])) == 0
    assert sorted(os.listdir(out)) == ["export.json", "model.onnx", "model_int8.onnx"]
    assert os.listdir(cwd) == []
    tmp_path = out
    info = json.loads((tmp_path / "export.json").read_text())
    int8 = info["int8"]
    assert int8["file"] == "model_int8.onnx" and int8["calibration_dataset"] == VAL
    assert int8["calibration_images"] == 4 and int8["verification_images"] == 3
    assert int8["verification_held_out"] and int8["calibration_method"] == "percentile"
    assert int8["activation_type"] == "QUInt8" and int8["per_channel"]
    # the graph is dynamic: the test resize's sizes go in as they are
    assert int8["calibration_resized_to_graph"] == 0
    # the INT8 file holds quantised convs, ORT runs them as integer convs; the classifier
    # (and the final resize) stay float, as named in kept_in_float
    ops = [n.op_type for n in onnx.load(str(tmp_path / "model_int8.onnx")).graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    convs = int8["convs"]
    assert convs["int8_convs"] == convs["fp32_convs"] - 1 and convs["float_convs_left"] == 1
    kept = {n.name: n.op_type for n in onnx.load(str(tmp_path / "model_int8.onnx")).graph.node
            if n.name in int8["kept_in_float"]}
    assert "Conv" in kept.values() and "Resize" in kept.values()
    # the reported figures are those of the two files on 3 val images outside the calibration
    # set, through the test mapper (recomputed here)
    import export_model
    import onnxruntime as ort
    from d2seg.export.quantize import CalibrationImages, calibration_dicts

    argv = _args(tmp_path, weights)
    cfg = export_model.export_cfg(argv[1], argv[argv.index("--calib-images") + 4:])
    check = CalibrationImages(cfg, calibration_dicts(VAL, 3, skip=calibration_dicts(VAL, 4)),
                              ["batch", 3, "height", "width"])
    runs = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"])
            for f in ("model.onnx", "model_int8.onnx")]
    same = pixels = diff = 0
    for k in range(3):
        fp32, int8_logits = (r.run(None, {"image": check.batch_at(k)})[0] for r in runs)
        same += (fp32.argmax(1) == int8_logits.argmax(1)).sum()
        pixels += fp32[:, 0].size
        diff = max(diff, np.abs(fp32 - int8_logits).max())
    a = int8["agreement"]
    assert a["pixels"] == pixels and a["argmax_agreement"] == pytest.approx(same / pixels)
    assert a["max_abs_diff"] == pytest.approx(diff) and 0 < diff < a["max_abs_logit"]
    assert same < pixels  # INT8 is not the fp32 file: random weights leave near-ties that flip
    assert int8["latency_s"]["fp32"] > 0 and int8["latency_s"]["int8"] > 0
    assert "int8:" in capsys.readouterr().out


def test_int8_calibration_images_are_the_test_pipeline(tmp_path, weights):
    """The calibration reader gives what the test mapper gives (resize to TEST_IMG_SCALE, RGB)
    as float32 1 x 3 x H x W; a fixed-size graph gets the image resized to its size."""
    from detectron2.data import detection_utils

    from common import get_d2seg_cfg
    from d2seg.data.mappers import SemSegDatasetMapper
    from d2seg.export.quantize import CalibrationImages, calibration_dicts

    yaml, fcn = METHODS["fcn"]
    cfg = get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml",
                        [*_RESNET, *_HEAD, *fcn, "INPUT.TEST_IMG_SCALE", [80, 64],
                         "INPUT.FORMAT", "BGR"])
    dicts = calibration_dicts(VAL, 3)
    assert len(dicts) == 3 and dicts[0] == DatasetCatalog.get(VAL)[0]
    images = CalibrationImages(cfg, dicts, ["batch", 3, "height", "width"])
    first = images.get_next()["image"]
    mapped = SemSegDatasetMapper(cfg, is_train=False)(images.dicts[0])["image"].numpy()  # BGR
    assert first.dtype == np.float32 and first.shape == (1, *mapped.shape)
    assert max(mapped.shape[1:]) <= 80 and min(mapped.shape[1:]) <= 64  # resized, keep-ratio
    np.testing.assert_array_equal(first[0], mapped[::-1].astype(np.float32))  # to RGB
    rgb = detection_utils.read_image(dicts[0]["file_name"], format="RGB")
    assert abs(first[0].mean() - rgb.mean()) < 3  # same picture, resized
    assert len(images) == 3 and images.get_next() is not None
    fixed = CalibrationImages(cfg, dicts, [2, 3, 40, 56])
    assert fixed.get_next()["image"].shape == (2, 3, 40, 56) and fixed.resized == 2
    assert len(fixed) == 2


def test_int8_errors(tmp_path, weights, capsys, monkeypatch):
    assert _run(_args(tmp_path / "a", weights, ["--format", "torchscript"])) == 2
    assert "--int8 quantises the ONNX file: use --format onnx" in capsys.readouterr().err
    argv = _args(tmp_path / "b", weights)
    argv[argv.index("--calib-dataset") + 1] = "no_such_dataset"
    assert _run(argv) == 2
    assert "'no_such_dataset' is not registered" in capsys.readouterr().err
    DatasetCatalog.register("d2seg_int8_empty", lambda: [])
    try:
        argv[argv.index("--calib-dataset") + 1] = "d2seg_int8_empty"
        assert _run(argv) == 2
        assert "'d2seg_int8_empty' has no images" in capsys.readouterr().err
    finally:
        DatasetCatalog.remove("d2seg_int8_empty")
    argv = [a for a in _args(tmp_path / "c", weights) if a not in ("--calib-dataset", VAL)]
    assert _run(argv) == 2 and "--int8 needs --calib-dataset" in capsys.readouterr().err
    # onnxruntime not installed: a None entry in sys.modules makes importing it fail
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    assert _run(_args(tmp_path / "d", weights)) == 2
    assert "pip install 'd2seg[deploy]'" in capsys.readouterr().err
    for sub in "abcd":
        assert not (tmp_path / sub).exists() or os.listdir(tmp_path / sub) == []


def test_int8_failure_keeps_the_checked_fp32_file(tmp_path, weights, capsys, monkeypatch):
    """A quantisation that raises leaves model.onnx (it passed its check) and export.json with
    the error, no INT8 file (not even one from an earlier run), and exit status 1."""
    import d2seg.export.quantize as quantize

    (tmp_path / "model_int8.onnx").write_bytes(b"stale")

    def fail(*args, **kwargs):
        raise RuntimeError("calibration broke")

    monkeypatch.setattr(quantize, "quantize_and_verify", fail)
    assert _run(_args(tmp_path, weights)) == 1
    assert sorted(os.listdir(tmp_path)) == ["export.json", "model.onnx"]
    info = json.loads((tmp_path / "export.json").read_text())
    assert info["int8"] == {"error": "RuntimeError: calibration broke"}
    assert "INT8 quantisation failed: RuntimeError: calibration broke" in capsys.readouterr().err


def test_int8_openvino_backend_writes_an_ir_that_runs_everywhere(tmp_path, weights, capsys):
    """--int8-backend openvino: model_int8.xml + .bin (NNCF), checked against model.onnx like the
    ONNX Runtime file, the classifier kept in float; SemSegPredictor and the agreement read it
    through OpenVINO (evaluate_deployed: tests/test_evaluate_deployed.py). Switching routes in
    the same folder leaves only the new route's INT8 files."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import d2seg
    import export_model
    from d2seg.export.openvino_int8 import OpenVinoRunner
    from d2seg.export.quantize import CalibrationImages, calibration_dicts

    (tmp_path / "model_int8.onnx").write_bytes(b"from the other route")
    extra = ["--int8-backend", "openvino", "--int8-latency", "1"]
    argv = _args(tmp_path, weights, extra)
    opts = argv[argv.index("--int8-check-images") + 2 + len(extra):]
    assert _run(argv) == 0
    assert sorted(os.listdir(tmp_path)) == ["export.json", "model.onnx", "model_int8.bin",
                                            "model_int8.xml"]
    int8 = json.loads((tmp_path / "export.json").read_text())["int8"]
    assert int8["backend"] == "openvino" and int8["file"] == "model_int8.xml"
    assert int8["format"] == "OpenVINO IR" and int8["nncf"] and int8["openvino"]
    assert "/decode_head/conv_seg/Conv" in int8["kept_in_float"]
    convs = int8["convs"]
    assert convs["int8_convs"] == convs["fp32_convs"] - 1 and convs["float_convs_left"] == 1
    assert int8["latency_s"]["int8"] > 0
    assert "int8:" in capsys.readouterr().out
    # the reported agreement is OpenVINO's file against ORT's fp32 one on the held-out images
    cfg = export_model.export_cfg(argv[1], opts)
    check = CalibrationImages(cfg, calibration_dicts(VAL, 3, skip=calibration_dicts(VAL, 4)),
                              ["batch", 3, "height", "width"])
    ov_file = OpenVinoRunner(str(tmp_path / "model_int8.xml"), threads=1)
    import onnxruntime as ort

    fp32 = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    same = pixels = 0
    for k in range(3):
        x = check.batch_at(k)
        a, b = fp32.run(None, {"image": x})[0], ov_file(x)
        same += (a.argmax(1) == b.argmax(1)).sum()
        pixels += a[:, 0].size
    assert int8["agreement"]["argmax_agreement"] == pytest.approx(same / pixels)
    # compiled per input shape (OpenVINO's dynamic-shape INT8 runs were wrong for STDC1)
    before = set(ov_file._compiled)
    assert ov_file(np.zeros((1, 3, 67, 93), np.float32)).shape == (1, 5, 67, 93)
    assert set(ov_file._compiled) - before == {(1, 3, 67, 93)} and len(ov_file._compiled) <= 4
    assert int8["agreement"]["argmax_agreement"] > 0.8  # random tiny weights: near-ties flip
    # the predictor runs the IR: its labels agree with the fp32 file's as the figures above do
    image = DatasetCatalog.get(VAL)[-1]["file_name"]
    import cv2

    bgr = cv2.imread(image)
    labels = d2seg.SemSegPredictor(cfg, model_file=str(tmp_path / "model_int8.xml"))(bgr)
    reference = d2seg.SemSegPredictor(cfg, model_file=str(tmp_path / "model.onnx"))(bgr)
    assert labels.shape == reference.shape == bgr.shape[:2]
    assert (labels == reference).double().mean() > 0.9
    # back to ONNX Runtime in the same folder: the IR goes, model_int8.onnx comes
    assert _run(_args(tmp_path, weights)) == 0
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("model_int8")) == \
        ["model_int8.onnx"]


def test_openvino_errors_name_the_file_and_the_extra(tmp_path, weights, capsys, monkeypatch):
    pytest.importorskip("openvino")
    from d2seg.export.openvino_int8 import OpenVinoRunner

    with pytest.raises(FileNotFoundError, match="missing.xml: no such OpenVINO IR file"):
        OpenVinoRunner(str(tmp_path / "missing.xml"))
    bad = tmp_path / "bad.xml"
    bad.write_text("<net>not an IR")
    with pytest.raises(ValueError, match="bad.xml: not an OpenVINO IR that OpenVINO can load"):
        OpenVinoRunner(str(bad))
    monkeypatch.setitem(sys.modules, "nncf", None)
    assert _run(_args(tmp_path / "e", weights, ["--int8-backend", "openvino"])) == 2
    assert "pip install 'd2seg[openvino]'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() or os.listdir(tmp_path / "e") == []


def test_int8_keep_float_keeps_the_named_nodes(tmp_path, weights, capsys):
    """--int8-keep-float REGEX (repeatable): the nodes it finds stay float, in export.json's
    kept_in_float and in ORT's optimised graph; a pattern that finds nothing fails the INT8 step
    with the pattern and example names, model.onnx kept."""
    out = tmp_path / "a"
    assert _run(_args(out, weights, ["--int8-keep-float", "/decode_head/convs",
                                     "--int8-keep-float", "conv_cat"])) == 0
    int8 = json.loads((out / "export.json").read_text())["int8"]
    kept = int8["kept_in_float"]
    assert {"/decode_head/convs.0/Conv", "/decode_head/convs.1/Conv",
            "/decode_head/conv_cat/Conv", "/decode_head/conv_seg/Conv"} <= set(kept)
    assert all("decode_head" in k or "Resize" in k for k in kept)
    convs = int8["convs"]
    assert convs["float_convs_left"] == 4 and convs["int8_convs"] == convs["fp32_convs"] - 4
    capsys.readouterr()
    out = tmp_path / "b"
    assert _run(_args(out, weights, ["--int8-keep-float", "no_such_node"])) == 1
    err = capsys.readouterr().err
    assert "--int8-keep-float 'no_such_node' matches no node of" in err
    assert "/backbone/" in err
    assert sorted(os.listdir(out)) == ["export.json", "model.onnx"]
    # the OpenVINO route keeps the same nodes in float
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        out = tmp_path / "c"
        assert _run(_args(out, weights, ["--int8-backend", "openvino", "--int8-keep-float",
                                         "/decode_head/conv"])) == 0
        int8 = json.loads((out / "export.json").read_text())["int8"]
        assert int8["convs"]["float_convs_left"] == 4
