"""INT8 with OpenVINO: NNCF's post-training quantisation of an exported ``model.onnx`` into an
OpenVINO IR (``model_int8.xml`` + ``.bin``), and running such a file (docs/deployment.md, "INT8
routes").

The other route to ONNX Runtime's QDQ file (:mod:`d2seg.export.quantize`): on CPUs with AMX
(Intel Xeon 4th gen and later, this project's machine) OpenVINO's oneDNN kernels ran STDC1,
BiSeNetV2 and LR-ASPP 1.35-2.6x faster than ORT's INT8 file (Fast-SCNN and a narrow PSPNet
slower). Settings: NNCF's defaults for CNNs
(symmetric 8-bit, the PERFORMANCE preset, fast bias correction) with ``overflow_fix`` off (it
halves the first conv's weight range for CPUs without VNNI), the classifier conv and what follows
it left in float as in the ORT recipe, and the float parts run in f32 (OpenVINO's default on
such CPUs is bf16: ``INFERENCE_PRECISION_HINT``).

Nothing here runs on import: openvino and nncf are the ``openvino`` extra's.
"""
import importlib
import os
import re
from typing import Dict, List

import numpy as np

__all__ = ["IR_SUFFIX", "require_openvino", "is_openvino_file", "OpenVinoRunner",
           "quantize_openvino", "runtime_convs", "SETTINGS"]

IR_SUFFIX = ".xml"
SETTINGS = {"format": "OpenVINO IR", "quantizer": "NNCF post-training (MinMax, PERFORMANCE "
            "preset: symmetric 8-bit)", "overflow_fix": "disabled",
            "float_precision": "f32"}


def require_openvino(quantize: bool = False):
    """The openvino module (and nncf with ``quantize``), or an ImportError naming the extra."""
    try:
        for name in ("openvino",) + (("nncf",) if quantize else ()):
            importlib.import_module(name)
    except ImportError as e:
        raise ImportError("the OpenVINO route needs openvino" + (" and nncf" if quantize else "")
                          + f": pip install 'd2seg[openvino]' ({type(e).__name__}: {e})") from e
    return importlib.import_module("openvino")


def is_openvino_file(path: str) -> bool:
    return path.lower().endswith(IR_SUFFIX)


class OpenVinoRunner:
    """An OpenVINO IR compiled for the CPU (``threads`` inference threads, 0 = OpenVINO's
    default; float parts in f32). ``inputs`` / ``outputs``: the IR's shapes, lists of ints or
    None (dynamic); calling it with an N x 3 x H x W float32 array returns the output array.

    The IR is compiled for each input shape it is called with (the last ``cache`` kept): with
    dynamic shapes, OpenVINO 2026.4.1's CPU plugin ran STDC1's INT8 IR wrongly (argmax agreement
    with the fp32 file 72 %, 99.6 % with the same IR reshaped to the input's shape)."""

    def __init__(self, path: str, threads: int = 0, cache: int = 4):
        ov = require_openvino()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such OpenVINO IR file")
        self.core, self.path, self.cache = ov.Core(), path, cache
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.model = self.core.read_model(path)
        except Exception as e:  # a damaged .xml, a missing .bin, ...
            raise ValueError(f"{path}: not an OpenVINO IR that OpenVINO can load "
                             f"({type(e).__name__}: {e})") from e
        dims = lambda port: [d.get_length() if d.is_static else None  # noqa: E731
                             for d in port.get_partial_shape()]
        self.inputs = [dims(p) for p in self.model.inputs]
        self.outputs = [dims(p) for p in self.model.outputs]
        self._compiled: Dict[tuple, tuple] = {}

    def compiled_for(self, shape) -> "object":
        """The compiled model for inputs of ``shape`` (compiled on first use)."""
        return self._entry(shape)[0]

    def _entry(self, shape) -> tuple:
        """(compiled model, its infer request) for inputs of ``shape``."""
        shape = tuple(int(s) for s in shape)
        if shape not in self._compiled:
            model = self.model.clone()
            if not model.inputs[0].get_partial_shape().is_static:
                model.reshape(list(shape))
            try:
                compiled = self.core.compile_model(model, "CPU", self.config)
            except Exception as e:
                raise ValueError(f"{self.path}: OpenVINO cannot compile it for inputs of shape "
                                 f"{list(shape)} ({type(e).__name__}: {e})") from e
            if len(self._compiled) >= self.cache:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[shape] = (compiled, compiled.create_infer_request())
        return self._compiled[shape]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        compiled, request = self._entry(x.shape)
        return request.infer({0: x})[compiled.outputs[0]].copy()


class _Images:
    """NNCF's dataset: the calibration reader's batches, mapped when iterated (not held)."""

    def __init__(self, reader):
        self.reader = reader

    def __iter__(self):
        return (self.reader.batch_at(k) for k in range(len(self.reader)))

    def __len__(self):
        return len(self.reader)


def quantize_openvino(fp32_path: str, xml_path: str, reader, *, keep_float: List[str]) -> Dict:
    """Writes ``xml_path`` (and its .bin): ``fp32_path`` read by OpenVINO and quantised by NNCF
    on every batch of ``reader`` (:class:`~d2seg.export.quantize.CalibrationImages`), the nodes
    named in ``keep_float`` left in float. Returns the settings used."""
    ov = require_openvino(quantize=True)
    import nncf
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                       OverflowFix)

    model = ov.Core().read_model(fp32_path)
    quantized = nncf.quantize(
        model, nncf.Dataset(_Images(reader)), subset_size=len(reader),
        # OpenVINO names a Conv's parts "<onnx name>/WithoutBiases" and "<onnx name>"
        ignored_scope=nncf.IgnoredScope(
            patterns=[f"^{re.escape(name)}(/.*)?$" for name in keep_float], validate=False),
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.DISABLE))
    ov.save_model(quantized, xml_path, compress_to_fp16=False)
    return {**SETTINGS, "backend": "openvino", "kept_in_float": list(keep_float),
            "openvino": ov.__version__, "nncf": nncf.__version__}


def runtime_convs(fp32_path: str, xml_path: str, input_shape) -> Dict:
    """Convs of the fp32 ONNX file against the convolutions OpenVINO's CPU plugin runs in 8 bits
    for ``xml_path`` compiled for inputs of ``input_shape`` (its runtime model's
    ``runtimePrecision``)."""
    import onnx

    compiled = OpenVinoRunner(xml_path).compiled_for(input_shape)
    precisions = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) == "Convolution":
            precisions.append(info["runtimePrecision"].astype(str).lower())
    convs = sum(n.op_type == "Conv" for n in onnx.load(fp32_path).graph.node)
    return {"fp32_convs": convs, "int8_convs": sum(p in ("i8", "u8") for p in precisions),
            "float_convs_left": sum(p not in ("i8", "u8") for p in precisions)}
