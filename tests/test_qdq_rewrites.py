"""d2seg.export.qdq_rewrites: the graph rewrites around ONNX Runtime's quantiser change no result
(the two after quantisation are exact, the HardSwish one is float rounding) and leave no
dequantised tensor where the pattern was: HardSwish, a Shape and a zero Pad on quantised maps."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from d2seg.export import qdq_rewrites  # noqa: E402
from d2seg.export.quantize import count_fused_convs, quantize_onnx  # noqa: E402


class _Net(nn.Module):
    """conv -> HardSwish -> "same" padding computed from the map's size (as MobileNetV3's
    stride-2 convs) -> stride-2 conv -> ReLU -> conv -> upsample to the input size."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, 2), \
            nn.Conv2d(8, 4, 1)
        for conv in (self.c1, self.c2, self.c3):
            conv.weight.data = torch.randn(conv.weight.shape, generator=g) * 0.3
            conv.bias.data = torch.randn(conv.bias.shape, generator=g) * 0.1

    def forward(self, x):
        y = F.hardswish(self.c1(x / 64.0 - 2))
        h, w = y.shape[-2:]
        ph, pw = (h + 1) % 2 + 1, (w + 1) % 2 + 1  # 3x3 stride 2: 1 on an even size, 2 odd
        y = F.pad(y, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        y = self.c3(F.relu(self.c2(y)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _Reader:
    """ORT's calibration reader over a few random images (``CalibStridedMinMax`` needs
    ``__len__`` and ``set_range``)."""

    def __init__(self, n=6, h=33, w=40):
        g = np.random.default_rng(0)
        self.images = [g.uniform(0, 255, (1, 3, h + 2 * i, w + 3 * i)).astype(np.float32)
                       for i in range(n)]
        self.rewind()

    def __len__(self):
        return len(self.images)

    def set_range(self, start_index, end_index):
        self.at, self.end = start_index, end_index

    def rewind(self):
        self.set_range(0, len(self))

    def get_next(self):
        if self.at >= min(self.end, len(self)):
            return None
        self.at += 1
        return {"image": self.images[self.at - 1]}


def _run(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    path = tmp_path_factory.mktemp("qdq") / "model.onnx"
    torch.onnx.export(_Net().eval(), (torch.rand(1, 3, 32, 48) * 255,), str(path), dynamo=False,
                      opset_version=17, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {2: "h", 3: "w"}, "logits": {2: "h", 3: "w"}})
    return path


SIZES = [(32, 48), (33, 47), (30, 51), (41, 40)]  # both paddings on each axis


def _max_diff_over_sizes(path_a, path_b, seed):
    """max |a - b| / max(1, max |a|) of the two files' outputs over SIZES (equal shapes)."""
    g, worst = np.random.default_rng(seed), 0.0
    for h, w in SIZES:
        x = g.uniform(0, 255, (1, 3, h, w)).astype(np.float32)
        a, b = _run(path_a, x), _run(path_b, x)
        assert a.shape == b.shape == (1, 4, h, w)
        worst = max(worst, float(np.abs(a - b).max()) / max(1.0, float(np.abs(a).max())))
    return worst


def test_rewrites_after_quantisation_are_exact_and_fuse(fp32, tmp_path):
    plain = tmp_path / "plain.onnx"
    settings = quantize_onnx(str(fp32), str(plain), _Reader(), method="minmax",
                             keep_output_chain=False, graph_rewrites=False)
    assert settings["graph_rewrites"] == {}
    model = onnx.load(str(plain))
    counts = qdq_rewrites.after_quantization(model)
    assert counts["shapes_read_quantized"] >= 1 and counts["pads_on_quantized"] == 1
    rewritten = tmp_path / "rewritten.onnx"
    onnx.save(model, str(rewritten))
    assert _max_diff_over_sizes(plain, rewritten, seed=1) == 0.0
    # ORT's optimised graph: the pad and the shape no longer read a dequantised map
    before = count_fused_convs(str(fp32), str(plain))["float_ops"]
    after = count_fused_convs(str(fp32), str(rewritten))["float_ops"]
    assert before.get("Pad") == 1 and before.get("Shape", 0) >= 1
    assert "Pad" not in after and "Shape" not in after


def test_hardswish_rewrite_is_the_same_function_in_integer_ops(fp32, tmp_path):
    model = onnx.load(str(fp32))
    ops = [n.op_type for n in model.graph.node]
    assert "HardSwish" in ops
    assert qdq_rewrites.before_quantization(model) == {"hardswish_quantizable": 1}
    assert "HardSwish" not in [n.op_type for n in model.graph.node]
    rewritten = tmp_path / "hswish.onnx"
    onnx.save(model, str(rewritten))
    assert _max_diff_over_sizes(fp32, rewritten, seed=2) <= 1e-5
    # the x * HardSigmoid(x) form that ORT's pre-processing writes is found too
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp_path / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    pre_model = onnx.load(str(pre))
    if "HardSigmoid" in [n.op_type for n in pre_model.graph.node]:
        assert qdq_rewrites.hardswish_quantizable(pre_model) == 1
        assert "HardSigmoid" not in [n.op_type for n in pre_model.graph.node]
    # quantised with all rewrites: every conv and the HardSwish run on integers
    int8 = tmp_path / "int8.onnx"
    settings = quantize_onnx(str(fp32), str(int8), _Reader(), method="minmax",
                             keep_output_chain=False)
    assert settings["graph_rewrites"]["hardswish_quantizable"] == 1
    coverage = count_fused_convs(str(fp32), str(int8))
    assert coverage["int8_convs"] == 3 and coverage["float_convs_left"] == 0
    assert not {"HardSigmoid", "HardSwish", "Mul", "Add", "Pad", "Shape"} & set(
        coverage["float_ops"])
    x = np.random.default_rng(3).uniform(0, 255, (1, 3, 37, 45)).astype(np.float32)
    a, b = _run(fp32, x), _run(int8, x)
    assert (a.argmax(1) == b.argmax(1)).mean() > 0.9


def test_pad_rewrite_leaves_other_pads(fp32, tmp_path):
    """A Pad whose value is not zero, or between different quantisation parameters, stays."""
    from onnx import numpy_helper

    plain = tmp_path / "plain.onnx"
    quantize_onnx(str(fp32), str(plain), _Reader(), method="minmax", keep_output_chain=False,
                  graph_rewrites=False)
    model = onnx.load(str(plain))
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    model.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    while len(pad.input) < 3:
        pad.input.append("")
    pad.input[2] = "one"
    assert qdq_rewrites.pads_on_quantized(model) == 0
    pad.input[2] = ""
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear"
             and n.input[0] == pad.output[0])
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    q.input[1] = "half"
    assert qdq_rewrites.pads_on_quantized(model) == 0


def test_mobilenet_v3_lraspp_int8_runs_its_blocks_on_integers(tmp_path):
    """MobileNetV3's squeeze-excitation pools with GlobalAveragePool (ReduceMean has no integer
    kernel), its HardSwish and its adaptive "same" padding are rewritten: what still reads a
    dequantised tensor is the SE gates' HardSigmoid (1 x 1 maps), resizes and the classifier."""
    from test_realtime import LRASPP_SMALL, _model

    from d2seg.export.exporters import export
    from d2seg.export.wrapper import SegmentationExportModule, plain_for_export

    module = SegmentationExportModule(plain_for_export(_model(LRASPP_SMALL)), labels=False).eval()
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model_int8.onnx"
    export(module, "onnx", str(fp32), torch.rand(1, 3, 400, 416) * 255, dynamic=True)
    ops = [n.op_type for n in onnx.load(str(fp32)).graph.node]
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops
    settings = quantize_onnx(str(fp32), str(int8), _Reader(2, 400, 416), method="minmax")
    rewrites = settings["graph_rewrites"]
    assert rewrites["hardswish_quantizable"] > 0 and rewrites["pads_on_quantized"] > 0
    assert rewrites["shapes_read_quantized"] > 0
    coverage = count_fused_convs(str(fp32), str(int8))
    assert coverage["float_convs_left"] == 1  # the classifier, kept in float
    assert set(coverage["float_ops"]) <= {"HardSigmoid", "Resize", "Conv"}
