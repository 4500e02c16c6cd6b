"""ONNX graph rewrites around ONNX Runtime's static QDQ quantiser, so that its CPU provider runs
more of an INT8 graph on integers (measured in docs/deployment.md, "INT8").

ORT fuses ``DequantizeLinear -> op -> QuantizeLinear`` into an integer kernel only where it has
one for the op and the DequantizeLinear feeds nothing else. Three patterns of d2seg's exported
graphs defeat that and leave float islands, each costing a dequantise/quantise of a full
feature map:

* ``Shape`` of a dequantised tensor (the dynamic H x W of every resize and of MobileNetV3's
  adaptive padding): the extra consumer keeps the DequantizeLinear of the next conv unfused.
  The shape of the quantised tensor is the same (:func:`shapes_read_quantized`, exact).
* ``Pad`` with zeros between a DequantizeLinear and a QuantizeLinear of the same scale and zero
  point (MobileNetV3's adaptive "same" padding) runs in float; padding the uint8 tensor with its
  zero point is the same
  (:func:`pads_on_quantized`, exact).
* HardSwish, which the quantiser's pre-processing writes as ``x * HardSigmoid(x)``: HardSigmoid
  has no integer kernel. ``x * (Clip(x + 3, 0, 6) * 1/6)`` is the same function with ops that
  all have one (:func:`hardswish_quantizable`, applied before calibration; float rounding only).
"""
from typing import Dict, List

import numpy as np

__all__ = ["hardswish_quantizable", "shapes_read_quantized", "pads_on_quantized",
           "before_quantization", "after_quantization"]


def _consumers(model) -> Dict[str, List]:
    users: Dict[str, List] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _producers(model) -> Dict[str, object]:
    return {out: node for node in model.graph.node for out in node.output}


def _constant(model, name: str):
    """The value of initializer ``name`` (None when it is not one)."""
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _remove_unused_dequantize(model) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    for node in [n for n in model.graph.node
                 if n.op_type == "DequantizeLinear" and n.output[0] not in used]:
        model.graph.node.remove(node)


def hardswish_quantizable(model) -> int:
    """Rewrites each HardSwish (the op, or ``Mul(x, HardSigmoid(x))`` with alpha 1/6, beta 1/2)
    as ``Mul(x, Mul(Clip(Add(x, 3), 0, 6), 1/6))``. Returns how many."""
    from onnx import helper, numpy_helper

    producer = _producers(model)
    found = []  # (nodes to remove, x, output name, base name)
    for node in model.graph.node:
        if node.op_type == "HardSwish":
            found.append(([node], node.input[0], node.output[0], node.name))
        elif node.op_type == "Mul" and len(node.input) == 2:
            for i in (0, 1):
                sig = producer.get(node.input[1 - i])
                if (sig is not None and sig.op_type == "HardSigmoid"
                        and sig.input[0] == node.input[i]
                        and np.isclose(_attr(sig, "alpha", 0.2), 1 / 6)
                        and np.isclose(_attr(sig, "beta", 0.5), 0.5)):
                    found.append(([sig, node], node.input[i], node.output[0], node.name))
                    break
    users = _consumers(model)
    nodes = list(model.graph.node)
    count = 0
    for removed, x, out, base in found:
        if len(removed) == 2 and len(users.get(removed[0].output[0], [])) != 1:
            continue  # the HardSigmoid is read elsewhere too: leave the pair
        consts = {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1 / 6}
        model.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32),
                                                               f"{base}_hswish_{k}")
                                       for k, v in consts.items())
        c = {k: f"{base}_hswish_{k}" for k in consts}
        new = [helper.make_node("Add", [x, c["three"]], [f"{base}_hswish_add"],
                                name=f"{base}_hswish_add"),
               helper.make_node("Clip", [f"{base}_hswish_add", c["zero"], c["six"]],
                                [f"{base}_hswish_relu6"], name=f"{base}_hswish_clip"),
               helper.make_node("Mul", [f"{base}_hswish_relu6", c["sixth"]],
                                [f"{base}_hswish_gate"], name=f"{base}_hswish_div6"),
               helper.make_node("Mul", [x, f"{base}_hswish_gate"], [out],
                                name=f"{base}_hswish_mul")]
        at = nodes.index(removed[-1])  # topological order: the new nodes replace the last one
        nodes[at:at + 1] = new
        for node in removed[:-1]:
            nodes.remove(node)
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return count


def shapes_read_quantized(model) -> int:
    """Points each ``Shape`` that reads a DequantizeLinear's output at its quantised input.
    Returns how many."""
    producer = _producers(model)
    count = 0
    for node in model.graph.node:
        source = producer.get(node.input[0]) if node.op_type == "Shape" else None
        if source is not None and source.op_type == "DequantizeLinear":
            node.input[0] = source.input[0]
            count += 1
    _remove_unused_dequantize(model)
    return count


def pads_on_quantized(model) -> int:
    """Runs each zero ``Pad`` between a DequantizeLinear and a QuantizeLinear of equal scale and
    zero point on the quantised tensor, padding with the zero point. Returns how many."""
    from onnx import helper, numpy_helper

    producer, users = _producers(model), _consumers(model)
    outputs = {o.name for o in model.graph.output}
    count = 0
    for pad in list(model.graph.node):
        if pad.op_type != "Pad" or _attr(pad, "mode", b"constant") not in (b"constant", "constant"):
            continue
        if len(pad.input) > 2 and pad.input[2]:
            value = _constant(model, pad.input[2])
            if value is None or np.any(value != 0):
                continue
        dq = producer.get(pad.input[0])
        after = users.get(pad.output[0], [])
        if (dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear"
                or after[0].output[0] in outputs or len(dq.input) < 3 or len(after[0].input) < 3):
            continue
        q = after[0]
        params = [_constant(model, n) for n in (dq.input[1], dq.input[2], q.input[1], q.input[2])]
        if (any(p is None or p.size != 1 for p in params) or params[0] != params[2]
                or params[1] != params[3] or params[1].dtype != params[3].dtype):
            continue
        zero_point = f"{pad.name}_zero_point"
        model.graph.initializer.append(numpy_helper.from_array(params[1].reshape(()), zero_point))
        while len(pad.input) < 3:
            pad.input.append("")
        pad.input[0], pad.input[2] = dq.input[0], zero_point
        for node in users.get(q.output[0], []):
            for j, name in enumerate(node.input):
                if name == q.output[0]:
                    node.input[j] = pad.output[0]
        for info in model.graph.value_info:  # the pad's output is now the quantised type
            if info.name == pad.output[0]:
                info.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(params[1].dtype)
        model.graph.node.remove(q)
        count += 1
    _remove_unused_dequantize(model)  # a DequantizeLinear may still feed other nodes
    return count


def before_quantization(model) -> Dict[str, int]:
    """The rewrites of the float graph (before calibration); counts by name."""
    return {"hardswish_quantizable": hardswish_quantizable(model)}


def after_quantization(model) -> Dict[str, int]:
    """The rewrites of the quantised graph; counts by name."""
    return {"shapes_read_quantized": shapes_read_quantized(model),
            "pads_on_quantized": pads_on_quantized(model)}
