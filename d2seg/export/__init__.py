"""Deployment: ONNX, TorchScript and torch.export of d2seg models (docs/deployment.md).

- :mod:`d2seg.export.tracing`: the trace-friendly formulations the model switches to while it
  is exported (imported by model code, so it imports nothing from d2seg);
- :mod:`d2seg.export.wrapper`: the exported module (RGB 0-255 image in, logits or labels out,
  normalisation in the graph) and the check that a model holds nothing that cannot export;
- :mod:`d2seg.export.exporters`: writing and verifying ``model.onnx`` / ``model.ts`` /
  ``model.pt2``.
- :mod:`d2seg.export.quantize`: static INT8 ``model_int8.onnx`` (ONNX Runtime), calibrated on a
  registered dataset through the test mapper, and its agreement with ``model.onnx``.
"""
