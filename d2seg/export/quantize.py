"""Static INT8 quantisation of an exported ``model.onnx`` with ONNX Runtime (docs/deployment.md).

The calibration images are read from a registered dataset through the model's own test pipeline
(:class:`~d2seg.data.mappers.SemSegDatasetMapper` with ``is_train=False``: the same keep-ratio
resize as inference), converted to the graph's input (RGB, 0-255, float32, N x 3 x H x W:
normalisation is in the graph). The recipe (:data:`RECIPE`) was chosen by measurement on this
project's 2-core AVX-512-VNNI CPU: QDQ, per-channel S8 weights, U8 activations (the S8->U8
rewrite ORT needs on x86 skips residual tensors, so S8 activations leave convs unfused),
Percentile ranges (99.999th percentile: fewer flipped pixels than MinMax, at ~10x the
calibration time; MinMax is the fast option), the classifier conv with everything after it
(the final upsample) kept in float, and :mod:`~d2seg.export.qdq_rewrites`' graph rewrites (fewer
float islands: HardSwish, shapes and paddings of quantised maps).

Nothing here runs on import: onnxruntime is the ``deploy`` extra's.
"""
import importlib
import os
import re
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..utils.timing import interleaved_blocks
from . import qdq_rewrites
from .openvino_int8 import OpenVinoRunner, is_openvino_file, quantize_openvino, runtime_convs

__all__ = ["RECIPE", "CALIBRATION_METHODS", "INT8_BACKENDS", "DEFAULT_METHOD",
           "require_onnxruntime", "calibration_dicts", "CalibrationImages", "output_chain",
           "nodes_matching", "quantize_onnx",
           "compare_onnx", "count_fused_convs", "interleaved_latency", "quantize_and_verify"]

CALIBRATION_METHODS = ("percentile", "minmax", "entropy")
# the two routes, measured in docs/deployment.md ("INT8 routes"); ONNX Runtime's is the default
INT8_BACKENDS = ("onnxruntime", "openvino")
DEFAULT_METHOD = "percentile"
# the measured choice (docs/deployment.md, "INT8"): see the module docstring
RECIPE = {"format": "QDQ", "activations": "QUInt8", "weights": "QInt8 per channel",
          "reduce_range": False, "calibration": DEFAULT_METHOD,
          "keep_float": "classifier conv and the ops after it",
          "graph_rewrites": "HardSwish as Add/Clip/Mul; Shape and zero Pad read the quantised "
                            "tensor (d2seg.export.qdq_rewrites)"}


def require_onnxruntime():
    """onnxruntime's quantization package, or an ImportError naming the extra to install."""
    try:
        for name in ("onnx", "onnxruntime.quantization"):  # the quantiser needs both
            importlib.import_module(name)
    except ImportError as e:
        raise ImportError("INT8 quantisation needs onnxruntime (and onnx): pip install "
                          f"'d2seg[deploy]' ({type(e).__name__}: {e})") from e
    return importlib.import_module("onnxruntime.quantization")


def calibration_dicts(dataset_name: str, num_images: int, *, skip: Sequence[dict] = ()):
    """``num_images`` dataset dicts of ``dataset_name`` spread evenly over it (deterministic),
    leaving out the dicts of ``skip`` (by file name). Raises ValueError naming the dataset when
    it is not registered or has no images."""
    from detectron2.data import DatasetCatalog

    if num_images <= 0:
        raise ValueError(f"--calib-images {num_images}: must be positive")
    if dataset_name not in DatasetCatalog.list():
        names = sorted(DatasetCatalog.list(), key=lambda n: (not n.startswith("d2seg"), n))
        raise ValueError(f"calibration dataset {dataset_name!r} is not registered ({len(names)} "
                         f"are, e.g. {', '.join(names[:12])}; a config's datasets are "
                         "registered from its yaml)")
    skipped = {d["file_name"] for d in skip}
    dicts = [d for d in DatasetCatalog.get(dataset_name) if d["file_name"] not in skipped]
    if not dicts:
        raise ValueError(f"calibration dataset {dataset_name!r} has no images"
                         + (" besides the calibration ones" if skipped else ""))
    n = min(num_images, len(dicts))
    return [dicts[i] for i in np.linspace(0, len(dicts) - 1, n).round().astype(int)]


class CalibrationImages:
    """The graph inputs for ``dicts``: each image through the test mapper of ``cfg`` (its
    resize), flipped to RGB for an INPUT.FORMAT "BGR" model, float32 1 x 3 x H x W. A slide-mode
    config's graph sees one window: the centre window of the crop size is taken. A graph with a
    fixed H x W (exported without --dynamic) gets the image resized to it (``resized`` counts
    them); a fixed batch B gets B consecutive images (wrapping around).

    Also ORT's calibration reader (``get_next``/``rewind``, and ``__len__``/``set_range`` for
    ``CalibStridedMinMax``, which calibrates one image at a time instead of holding every
    intermediate tensor of every image). Images are mapped when asked for, not held."""

    def __init__(self, cfg, dicts: List[dict], input_shape: Sequence, input_name: str = "image"):
        from ..data.mappers import SemSegDatasetMapper

        self.mapper = SemSegDatasetMapper(cfg, is_train=False)
        # labels are not needed (and a label that does not fit NUM_CLASSES must not stop it)
        self.dicts = [{k: v for k, v in d.items() if k != "sem_seg_file_name"} for d in dicts]
        self.bgr = cfg.INPUT.FORMAT == "BGR"
        self.crop = tuple(cfg.TEST.CROP_SIZE) if cfg.TEST.MODE == "slide" else None
        dims = [d if isinstance(d, int) and d > 0 else None for d in input_shape]
        self.batch = dims[0] or 1
        self.fixed_hw = tuple(dims[2:]) if None not in dims[2:] else None
        self.input_name = input_name
        self.resized = 0
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.dicts) // self.batch)

    def set_range(self, start_index: int, end_index: int):
        self._next, self._end = start_index, end_index

    def rewind(self):
        self.set_range(0, len(self))

    def image(self, i: int) -> np.ndarray:
        """3 x H x W float32 RGB of dict ``i``."""
        import cv2

        image = self.mapper(self.dicts[i])["image"].numpy()
        if self.bgr:
            image = image[::-1]
        image = image.transpose(1, 2, 0)
        if self.crop:
            h, w = image.shape[:2]
            y, x = max(h - self.crop[0], 0) // 2, max(w - self.crop[1], 0) // 2
            image = image[y:y + self.crop[0], x:x + self.crop[1]]
        if self.fixed_hw and image.shape[:2] != self.fixed_hw:
            image = cv2.resize(np.ascontiguousarray(image), self.fixed_hw[::-1],
                               interpolation=cv2.INTER_LINEAR)
            self.resized += 1
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)

    def batch_at(self, k: int) -> np.ndarray:
        n = len(self.dicts)
        return np.stack([self.image((k * self.batch + j) % n) for j in range(self.batch)])

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._next >= min(self._end, len(self)):
            return None
        self._next += 1
        return {self.input_name: self.batch_at(self._next - 1)}


def output_chain(model) -> List[str]:
    """Names of the nodes from each graph output back to the last Conv (the classifier,
    included), following each node's first input: the final resize (and an ArgMax) and the
    classifier. Quantising these puts the logits on an 8-bit grid and runs the final bilinear
    upsample on uint8."""
    producer = {out: node for node in model.graph.node for out in node.output}
    names = []
    for output in model.graph.output:
        node = producer.get(output.name)
        while node is not None:
            names.append(node.name)
            if node.op_type in ("Conv", "ConvTranspose"):
                break
            node = producer.get(node.input[0]) if node.input else None
    return names


def nodes_matching(model, patterns: Sequence[str], path: str = "model.onnx") -> List[str]:
    """Names of the nodes of ``model`` that a regular expression of ``patterns`` finds
    (``re.search``), in graph order; ValueError naming a pattern that finds none."""
    names = [n.name for n in model.graph.node]
    found = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"--int8-keep-float {pattern!r}: not a regular expression "
                             f"({e})") from e
        hits = [n for n in names if regex.search(n)]
        if not hits:
            convs = [n.name for n in model.graph.node if n.op_type == "Conv"][:3]
            raise ValueError(f"--int8-keep-float {pattern!r} matches no node of {path} (its "
                             f"node names look like {', '.join(convs)})")
        found += [n for n in hits if n not in found]
    return found


def _name_nodes(model) -> None:
    """Unnamed nodes cannot be excluded by name: give them unique ones."""
    used = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_d2seg_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def quantize_onnx(fp32_path: str, int8_path: str, reader: CalibrationImages, *,
                  method: str = DEFAULT_METHOD, keep_output_chain: bool = True,
                  per_channel: bool = True, activation_type: str = "QUInt8",
                  graph_rewrites: bool = True, keep_float: Sequence[str] = ()) -> Dict:
    """Writes ``int8_path``: ``fp32_path`` pre-processed (shape inference, ORT's basic graph
    optimisations) and quantised statically (:data:`RECIPE`), calibrated on ``reader``; with
    ``graph_rewrites``, :mod:`~d2seg.export.qdq_rewrites`' before and after quantisation.
    Returns the settings used."""
    import onnx

    q = require_onnxruntime()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {CALIBRATION_METHODS}")
    with tempfile.TemporaryDirectory(prefix="d2seg-int8-") as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        # ONNX's shape inference only: ORT's symbolic one, where it cannot finish (dynamic H x W
        # through resizes), writes sym_shape_infer_temp.onnx + its data into the working folder
        quant_pre_process(fp32_path, pre, skip_symbolic_shape=True)
        model = onnx.load(pre)
        _name_nodes(model)
        rewrites = qdq_rewrites.before_quantization(model) if graph_rewrites else {}
        onnx.save(model, pre)
        excluded = output_chain(model) if keep_output_chain else []
        excluded += [n for n in nodes_matching(model, keep_float, fp32_path) if n not in excluded]
        reader.rewind()
        quantized = os.path.join(tmp, "int8.onnx")
        q.quantize_static(
            pre, quantized, reader, quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
            reduce_range=False, activation_type=getattr(q.QuantType, activation_type),
            weight_type=q.QuantType.QInt8, nodes_to_exclude=excluded,
            calibrate_method={"minmax": q.CalibrationMethod.MinMax,
                              "entropy": q.CalibrationMethod.Entropy,
                              "percentile": q.CalibrationMethod.Percentile}[method],
            extra_options={"CalibStridedMinMax": 1})  # one image at a time (bounded memory)
        model = onnx.load(quantized)
        if graph_rewrites:
            rewrites.update(qdq_rewrites.after_quantization(model))
        onnx.save(model, int8_path)
    return {"calibration_method": method, "per_channel": per_channel,
            "activation_type": activation_type, "weight_type": "QInt8", "format": "QDQ",
            "kept_in_float": excluded, "graph_rewrites": rewrites}


def _session(path: str, threads: int = 0, optimized_path: Optional[str] = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if optimized_path:  # the QDQ fusions are "extended" ones; above that the file is CPU-specific
        options.optimized_model_filepath = optimized_path
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _runner(path: str, threads: int = 0):
    """``path`` (ONNX with ONNX Runtime, an OpenVINO IR .xml with OpenVINO) as a function of the
    input array."""
    if is_openvino_file(path):
        return OpenVinoRunner(path, threads)
    session = _session(path, threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def compare_onnx(fp32_path: str, int8_path: str, images: CalibrationImages) -> Dict[str, float]:
    """Runs both files (the INT8 one ONNX or OpenVINO IR) on every batch of ``images``: argmax
    agreement (labels for a --labels graph) over all pixels, and for logits the max |d logit|
    with the fp32 logits' max |logit| (its scale)."""
    fp32, int8 = _runner(fp32_path), _runner(int8_path)
    same = total = 0
    diff = scale = 0.0
    labels = None
    for k in range(len(images)):
        x = images.batch_at(k)
        a, b = fp32(x), int8(x)
        labels = a.ndim == 3
        if labels:
            same += int((a == b).sum())
            total += a.size
            continue
        same += int((a.argmax(1) == b.argmax(1)).sum())
        total += a.size // a.shape[1]
        diff = max(diff, float(np.abs(a - b).max()))
        scale = max(scale, float(np.abs(a).max()))
    figures = {"argmax_agreement": same / total, "pixels": total}
    if not labels:
        figures.update(max_abs_diff=diff, max_abs_logit=scale)
    return figures


def count_fused_convs(fp32_path: str, int8_path: str) -> Dict:
    """Convs of the fp32 file against the integer convs ORT runs for the INT8 file after its
    graph optimisations (QDQ pairs it could not fuse leave float convs), and ``float_ops``: the
    ops that still read a dequantised tensor there, by type (what keeps parts in float)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="d2seg-int8-") as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        _session(int8_path, optimized_path=optimized)
        nodes = list(onnx.load(optimized).graph.node)
    convs = sum(n.op_type == "Conv" for n in onnx.load(fp32_path).graph.node)
    dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    float_ops: Dict[str, int] = {}
    for n in nodes:
        if n.op_type != "DequantizeLinear" and dequantized.intersection(n.input):
            float_ops[n.op_type] = float_ops.get(n.op_type, 0) + 1
    ops = [n.op_type for n in nodes]
    return {"fp32_convs": convs, "int8_convs": sum(op in ("QLinearConv", "ConvInteger") or
                                                   op.endswith("QLinearConv") for op in ops),
            # FusedConv: a float Conv + activation ORT fused
            "float_convs_left": sum(op in ("Conv", "FusedConv") for op in ops),
            "float_ops": dict(sorted(float_ops.items()))}


def interleaved_latency(paths: Dict[str, str], image: np.ndarray, *, threads: int = 2,
                        rounds: int = 7, warmup: int = 1) -> Dict[str, float]:
    """Median seconds per run of each file at ``threads`` intra-op threads, timed in ``rounds``
    interleaved blocks (:func:`~d2seg.utils.timing.interleaved_blocks`) after ``warmup``
    untimed runs of each, so that every file sees the same machine."""
    runners = {k: _runner(p, threads) for k, p in paths.items()}
    runs = {k: (lambda r=r: r(image)) for k, r in runners.items()}
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = interleaved_blocks(runs, rounds=rounds)
    return {k: float(np.median(v)) for k, v in times.items()}


def quantize_and_verify(cfg, fp32_path: str, int8_path: str, dataset_name: str,
                        num_images: int = 100, verify_images: int = 20,
                        method: str = DEFAULT_METHOD, latency_rounds: int = 0,
                        backend: str = "onnxruntime", keep_float: Sequence[str] = ()) -> Dict:
    """Calibrates on ``num_images`` of ``dataset_name`` (:class:`CalibrationImages`), writes
    ``int8_path`` (``backend`` "onnxruntime": a QDQ ONNX file, :func:`quantize_onnx`;
    "openvino": an OpenVINO IR, :func:`~d2seg.export.openvino_int8.quantize_openvino`) and
    checks it against ``fp32_path`` on up to ``verify_images`` other images of the dataset (the
    calibration ones when it has no others), read the same way. The nodes whose names a
    regular expression of ``keep_float`` finds stay in float too (an attention head, say).
    Returns the ``int8`` entry of
    export.json. With ``latency_rounds`` it also times both files (2 threads, interleaved) on
    the first verification image."""
    import onnx
    import onnxruntime

    if backend not in INT8_BACKENDS:
        raise ValueError(f"INT8 backend {backend!r} is not one of {INT8_BACKENDS}")
    require_onnxruntime()
    graph_input = onnx.load(fp32_path, load_external_data=False).graph.input[0]
    shape = [d.dim_value if d.HasField("dim_value") else None
             for d in graph_input.type.tensor_type.shape.dim]
    calib = CalibrationImages(cfg, calibration_dicts(dataset_name, num_images), shape,
                              graph_input.name)
    if backend == "openvino":
        graph = onnx.load(fp32_path, load_external_data=False)
        names = output_chain(graph)
        names += [n for n in nodes_matching(graph, keep_float, fp32_path) if n not in names]
        settings = quantize_openvino(fp32_path, int8_path, calib, keep_float=names)
    else:
        settings = quantize_onnx(fp32_path, int8_path, calib, method=method,
                                 keep_float=keep_float)
    try:
        held_out = calibration_dicts(dataset_name, verify_images, skip=calib.dicts)
    except ValueError:  # every image went into calibration
        held_out = None
    check = CalibrationImages(cfg, held_out or calib.dicts[:verify_images], shape,
                              graph_input.name)
    info = {
        "file": os.path.basename(int8_path),
        "backend": backend,
        **settings,
        "calibration_dataset": dataset_name,
        "calibration_images": len(calib.dicts),
        "calibration_resized_to_graph": calib.resized,
        "slide_window": list(calib.crop) if calib.crop else None,
        "verification_images": len(check.dicts),
        "verification_held_out": held_out is not None,
        "agreement": compare_onnx(fp32_path, int8_path, check),
        "convs": (runtime_convs(fp32_path, int8_path, check.batch_at(0).shape)
                  if backend == "openvino" else count_fused_convs(fp32_path, int8_path)),
        "onnxruntime": onnxruntime.__version__,
    }
    if latency_rounds:
        seconds = interleaved_latency({"fp32": fp32_path, "int8": int8_path}, check.batch_at(0),
                                      rounds=latency_rounds)
        info["latency_s"] = {**seconds, "threads": 2, "rounds": latency_rounds,
                             "input": list(check.batch_at(0).shape)}
    return info
