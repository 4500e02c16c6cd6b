"""Export of all 13 methods (tiny models) to ONNX with dynamic N/H/W, checked in ONNX Runtime at
two sizes against PyTorch; TorchScript and torch.export for the ResNet and HRNet families; the
export tool's contract (files, export.json, failure paths) and its errors."""
import json
import os

import pytest
import torch

from export_models import _HEAD, _RESNET, METHODS, REPO_CONFIGS, tiny_model
from d2seg.export.exporters import (
    FILE_NAMES, LOGIT_TOLERANCE, MIN_ARGMAX_AGREEMENT, export, run_exported, verify_export,
)
from d2seg.export.wrapper import SegmentationExportModule, check_exportable, plain_for_export

pytest.importorskip("onnxruntime")

EXPORT_SIZE = (1, 64, 96)
# another batch; H and W not multiples of 32, both odd at stride 8 (PSANet's other branch)
SECOND_SIZE = (2, 40, 56)


def _module(method, labels=False):
    model = tiny_model(method)
    return model, SegmentationExportModule(plain_for_export(model), labels=labels).eval()


def _assert_close_to_model(model, path, fmt):
    """The exported file against the unfused PyTorch model (the model's own sem_seg)."""
    image = torch.rand(*SECOND_SIZE[:1], 3, *SECOND_SIZE[1:],
                       generator=torch.Generator().manual_seed(3)) * 255
    with torch.no_grad():
        expected = torch.cat([x["sem_seg"][None] for x in model([{"image": im} for im in image])])
    got = run_exported(fmt, path, image)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= LOGIT_TOLERANCE * max(1.0, expected.abs().max())
    assert (got.argmax(1) == expected.argmax(1)).double().mean() >= MIN_ARGMAX_AGREEMENT


@pytest.mark.parametrize("method", sorted(METHODS))
def test_onnx_dynamic_export_matches_pytorch(method, tmp_path):
    model, module = _module(method)
    path = str(tmp_path / "model.onnx")
    example = torch.rand(EXPORT_SIZE[0], 3, *EXPORT_SIZE[1:]) * 255
    export(module, "onnx", path, example, dynamic=True)
    ok, figures = verify_export(module, "onnx", path, [EXPORT_SIZE, SECOND_SIZE])
    assert ok, figures
    assert figures["2x3x40x56"]["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT
    _assert_close_to_model(model, path, "onnx")


@pytest.mark.parametrize("fmt", ["torchscript", "torch-export"])
@pytest.mark.parametrize("method", ["fcn", "hrnet"])
def test_torchscript_and_torch_export_match_pytorch(fmt, method, tmp_path):
    _, module = _module(method)
    path = str(tmp_path / FILE_NAMES[fmt])
    export(module, fmt, path, torch.rand(EXPORT_SIZE[0], 3, *EXPORT_SIZE[1:]) * 255, dynamic=True)
    ok, figures = verify_export(module, fmt, path, [EXPORT_SIZE, SECOND_SIZE])
    assert ok, figures


def test_psanet_torchscript_keeps_the_odd_even_branch(tmp_path):
    """PSANet's shrink rule depends on whether both sides are odd: a trace at an even size must
    still take the odd branch at an odd size (a scripted If, not a frozen branch)."""
    model, module = _module("psanet")
    path = str(tmp_path / "model.ts")
    export(module, "torchscript", path, torch.rand(1, 3, 64, 96) * 255, dynamic=True)
    ok, figures = verify_export(module, "torchscript", path, [(1, 72, 104), (1, 64, 96)])
    assert ok, figures  # 72x104 -> 9x13 at stride 8: both odd


def test_labels_output_is_the_argmax(tmp_path):
    _, module = _module("fcn", labels=True)
    path = str(tmp_path / "model.onnx")
    export(module, "onnx", path, torch.rand(1, 3, 64, 96) * 255, dynamic=True, output_name="labels")
    image = torch.rand(2, 3, 45, 61) * 255
    got = run_exported("onnx", path, image)
    assert got.dtype == torch.int64 and got.shape == (2, 45, 61)
    module.labels = False
    with torch.no_grad():
        assert (got == module(image).argmax(1)).double().mean() >= MIN_ARGMAX_AGREEMENT


def test_bgr_model_takes_rgb_and_normalises_in_graph():
    """The exported graph takes RGB 0-255 whatever INPUT.FORMAT the model was trained with."""
    model = tiny_model("fcn")
    module = SegmentationExportModule(model, input_format="BGR").eval()
    image = torch.rand(1, 3, 40, 56) * 255
    with torch.no_grad():
        expected = model([{"image": image[0].flip(0)}])[0]["sem_seg"]
        assert torch.equal(module(image)[0], expected)


# ---- the tool -------------------------------------------------------------------------------
def _tool_args(tmp_path, fmt="onnx", extra=()):
    """export_model.py's command line for the tiny FCN (its narrow widths as overrides)."""
    yaml, opts = METHODS["fcn"]
    # a base model yaml has no training crop (Detectron2's relative default): give it one
    opts = [*_RESNET, *_HEAD, *opts, "INPUT.CROP.SIZE", [64, 96]]
    return ["--config-file", str(REPO_CONFIGS / f"_base_/models/{yaml}.yaml"), "--format", fmt,
            "--output", str(tmp_path), "--height", "64", "--width", "96", *extra,
            *map(str, opts)]


def _run_tool(argv):
    import export_model

    return export_model.main(argv)


def test_export_tool_writes_model_and_export_json(tmp_path, capsys):
    assert _run_tool(_tool_args(tmp_path, extra=["--dynamic", "--labels"])) == 0
    assert sorted(os.listdir(tmp_path)) == ["export.json", "model.onnx"]
    info = json.loads((tmp_path / "export.json").read_text())
    assert info["input"] == {"name": "image", "shape": ["batch", 3, "height", "width"],
                             "dtype": "float32", "layout": "NCHW", "channels": "RGB",
                             "range": [0, 255]}
    assert info["output"]["name"] == "labels" and info["output"]["dtype"] == "int64"
    assert info["opset"] == 17 and info["torch"] == torch.__version__ and info["dynamic"]
    assert len(info["normalization_in_graph"]["mean_rgb"]) == 3
    assert info["test_size_divisor"] == 0  # mmseg's ResizeToMultiple: not in this config
    assert set(info["parity"]) == {"1x3x64x96", "2x3x49x75"}  # export size + a second one
    assert all(f["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT for f in info["parity"].values())
    assert "parity 2x3x49x75" in capsys.readouterr().out


def _perturb_exported(monkeypatch, delta):
    """The exported file's logits come back shifted by ``delta``: a real difference, with the
    same argmax (the tool's random weights give logits well under 1)."""
    import d2seg.export.exporters as exporters

    load = exporters.load_exported
    monkeypatch.setattr(exporters, "load_exported",
                        lambda fmt, path: (lambda image: load(fmt, path)(image) + delta))


def test_export_tool_deletes_the_file_when_parity_fails(tmp_path, monkeypatch, capsys):
    _perturb_exported(monkeypatch, 1e-3)  # 10x the default tolerance
    assert _run_tool(_tool_args(tmp_path, "torchscript")) == 1
    assert os.listdir(tmp_path) == []
    err = capsys.readouterr().err
    assert "differs from PyTorch" in err and "0.0001 x max(1, max |logit|)" in err


def test_export_tool_tolerance_and_skip_verify_override(tmp_path, monkeypatch, capsys):
    _perturb_exported(monkeypatch, 1e-3)
    # a looser relative tolerance accepts it, and export.json records the figures
    assert _run_tool(_tool_args(tmp_path / "tol", "torchscript", ["--tolerance", "2e-3"])) == 0
    info = json.loads((tmp_path / "tol" / "export.json").read_text())
    assert info["parity_tolerance"] == 2e-3 and info["parity_passed"] and info["parity_enforced"]
    fig = info["parity"]["1x3x64x96"]
    assert fig["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3) and fig["logit_scale"] < 1
    assert fig["max_rel_diff"] == fig["max_abs_diff"]  # relative to max(1, scale)
    # --skip-verify writes the failing file, prints the figures and says it did not enforce them
    capsys.readouterr()
    assert _run_tool(_tool_args(tmp_path / "skip", "torchscript", ["--skip-verify"])) == 0
    assert sorted(os.listdir(tmp_path / "skip")) == ["export.json", "model.ts"]
    info = json.loads((tmp_path / "skip" / "export.json").read_text())
    assert not info["parity_passed"] and not info["parity_enforced"]
    out, err = capsys.readouterr()
    assert "parity 1x3x64x96" in out and "max_rel_diff 0.001" in out
    assert "--skip-verify" in err and "FAILED" in err
    assert _run_tool(_tool_args(tmp_path / "bad", extra=["--tolerance", "0"])) == 2
    assert "--tolerance 0.0 must be positive" in capsys.readouterr().err


def test_export_tool_tolerance_is_relative_to_the_logit_scale(tmp_path, capsys):
    """Logits scaled to ~1e4: ONNX Runtime's float32 sums differ from PyTorch's by more than an
    absolute 1e-4 (a float32 step at 1e4 is 1e-3), yet far less than 1e-4 of the scale: the
    tool accepts the file and records the scale and the relative figure."""
    yaml, opts = METHODS["fcn"]
    model = tiny_model("fcn", ["INPUT.CROP.SIZE", [64, 96]])
    with torch.no_grad():
        model.decode_head.conv_seg.weight *= 3000
        model.decode_head.conv_seg.bias *= 3000
    weights = tmp_path / "scaled.pth"
    torch.save({"model": model.state_dict()}, weights)
    out = tmp_path / "out"
    assert _run_tool(_tool_args(out, extra=["--dynamic"]) + ["MODEL.WEIGHTS", str(weights)]) == 0
    info = json.loads((out / "export.json").read_text())
    for fig in info["parity"].values():
        assert fig["logit_scale"] > 1000
        assert fig["max_abs_diff"] > 1e-4  # an absolute 1e-4 would refuse this file
        assert fig["max_rel_diff"] <= LOGIT_TOLERANCE
        assert fig["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT
    assert info["parity_passed"] and info["parity_tolerance"] == LOGIT_TOLERANCE


def test_export_tool_rejects_an_old_opset(tmp_path, capsys):
    assert _run_tool(_tool_args(tmp_path, extra=["--opset", "12"])) == 2
    assert "--opset 12 is too old" in capsys.readouterr().err and os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="einsum needs 12"):
        export(torch.nn.Identity(), "onnx", str(tmp_path / "m.onnx"), torch.zeros(1),
               dynamic=False, opset=11)


def test_export_tool_slide_config_prints_the_crop(tmp_path, capsys):
    args = _tool_args(tmp_path, "torchscript") + [
        "TEST.MODE", "slide", "TEST.CROP_SIZE", "[48, 64]", "TEST.STRIDE", "[32, 40]"]
    assert _run_tool(args) == 0
    out = capsys.readouterr().out
    assert "whole-mode network" in out and "48x64" in out and "stride 32x40" in out
    info = json.loads((tmp_path / "export.json").read_text())
    assert info["slide_crop_size"] == [48, 64] and info["test_mode"] == "slide"


def test_speed_kernels_and_compile_do_not_export():
    from d2seg.cpu_kernels import convert_to_cpu_kernels

    model = tiny_model("fcn")
    check_exportable(model)
    with pytest.raises(ValueError, match=r"module \S+ is PointwiseGemm\w*, a MODEL.SPEED CPU"):
        check_exportable(convert_to_cpu_kernels(model, gemm_1x1=True))
    ann = tiny_model("ann")
    ann.decode_head.fusion.fold_projections = True
    with pytest.raises(ValueError, match="decode_head.fusion.*FOLD_PROJECTIONS"):
        check_exportable(ann)


def test_unknown_format_is_named(tmp_path):
    with pytest.raises(ValueError, match="'tflite' is not one of"):
        export(torch.nn.Identity(), "tflite", str(tmp_path / "m"), torch.zeros(1), dynamic=False)


def test_benchmark_onnx_format_times_onnxruntime(capsys):
    import benchmark

    yaml, opts = METHODS["fcn"]
    r = benchmark.main(["--config-file", str(REPO_CONFIGS / f"_base_/models/{yaml}.yaml"),
                        "--format", "onnx", "--input-size", "40", "56", "--num-iter", "2",
                        "--warmup", "1", "--json", "--no-progress",
                        *map(str, [*_RESNET, *_HEAD, *opts])])
    assert r["format"] == "onnx" and r["output_shape"] == [40, 56] and r["ms_per_img"] > 0
    assert r["onnxruntime"] and r["machine"]["allocator"].split()[0] in ("glibc", "jemalloc",
                                                                        "tcmalloc")
