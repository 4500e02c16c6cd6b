"""Writing an exported model and checking it against PyTorch.

Formats: ``onnx`` (``model.onnx``, run with ONNX Runtime), ``torchscript`` (``model.ts``,
``torch.jit.trace``) and ``torch-export`` (``model.pt2``, ``torch.export``). All three take
``image`` and give ``logits`` or ``labels`` (see :mod:`d2seg.export.wrapper`).

ONNX goes through the TorchScript-based exporter (``dynamo=False``): it records every size as a
graph value, so H and W stay dynamic through the whole network, and the few shape-dependent
branches (PSANet's odd/even shrink rule) are scripted into ONNX ``If`` nodes. The dynamo
exporter turns such branches into guards on symbolic sizes and specialises or rejects them.
"""
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["FORMATS", "FILE_NAMES", "MIN_OPSET", "export", "load_exported", "run_exported",
           "compare", "passes", "verify_export", "LOGIT_TOLERANCE", "MIN_ARGMAX_AGREEMENT"]

FORMATS = ("onnx", "torchscript", "torch-export")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.ts", "torch-export": "model.pt2"}
# the oldest opset every method exports to and runs in ONNX Runtime: CCNet's/DANet's einsum
# needs 12, PSANet's integer clamp and its If of two Resizes 13 (measured with opsets 11-13)
MIN_OPSET = 13
OPSET_NEEDS = "einsum needs 12; PSANet's integer clamp and If/Resize need 13"
# the parity contract of the exported graph (issue 13, issue 22 / docs/deployment.md): max |d logit|
# <= LOGIT_TOLERANCE * max(1, max |logit|). Relative to the logits' scale because float32 sums
# accumulate in another order in ONNX Runtime: the error grows with the logits (an OCRNet with
# random converted weights has logits of 2552 and differs by 0.12, argmax 100 % equal)
LOGIT_TOLERANCE = 1e-4
MIN_ARGMAX_AGREEMENT = 0.9999


def export(module: nn.Module, fmt: str, path: str, example: torch.Tensor, *, dynamic: bool,
           opset: int = 17, output_name: str = "logits") -> str:
    """Writes ``module`` (an eval-mode :class:`SegmentationExportModule`) traced on
    ``example`` to ``path`` in format ``fmt``; N, H and W dynamic with ``dynamic``."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    with torch.no_grad():
        if fmt == "onnx":
            if opset < MIN_OPSET:
                raise ValueError(f"opset {opset} is too old for d2seg's graphs: they need "
                                 f"opset >= {MIN_OPSET} ({OPSET_NEEDS})")
            axes = {"image": {0: "batch", 2: "height", 3: "width"},
                    output_name: {0: "batch", **({1: "height", 2: "width"} if output_name ==
                                                 "labels" else {2: "height", 3: "width"})}}
            torch.onnx.export(module, (example,), path, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=[output_name],
                              dynamic_axes=axes if dynamic else None, do_constant_folding=True)
        elif fmt == "torchscript":
            traced = torch.jit.trace(module, (example,), check_trace=False)
            traced.save(path)
        else:
            shapes = None
            if dynamic:
                auto = torch.export.Dim.AUTO
                shapes = ({0: auto, 2: auto, 3: auto},)
                if example.shape[0] == 1:  # a size-1 example would specialise the batch to 1
                    example = example.expand(2, -1, -1, -1)
            program = torch.export.export(module, (example,), dynamic_shapes=shapes)
            torch.export.save(program, path)
    return path


def load_exported(fmt: str, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The file written by :func:`export` as a function of the image (ONNX Runtime's CPU
    provider for ``onnx``)."""
    if fmt == "onnx":
        import onnxruntime as ort  # deploy extra: pip install d2seg[deploy]

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda image: torch.from_numpy(session.run(None, {"image": image.numpy()})[0])
    module = torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()

    def run(image):
        with torch.no_grad():
            return module(image)

    return run


def run_exported(fmt: str, path: str, image: torch.Tensor) -> torch.Tensor:
    """Runs the file written by :func:`export` on ``image``."""
    return load_exported(fmt, path)(image)


def allowed_diff(expected: torch.Tensor, tolerance: float) -> float:
    """The largest |d logit| the contract allows for PyTorch's ``expected`` logits."""
    return tolerance * max(1.0, expected.abs().max().item())


def compare(expected: torch.Tensor, got: torch.Tensor,
            tolerance: Optional[float] = None) -> Dict[str, float]:
    """``expected``: PyTorch's N x C x H x W logits; ``got``: the exported logits or labels.

    Figures: ``logit_scale`` (max |logit|), with logits ``max_abs_diff`` and ``max_rel_diff``
    (max |d logit| / max(1, logit_scale)) and ``argmax_agreement_all``; ``argmax_agreement``,
    the fraction of agreeing labels where the logits decide: pixels whose two best logits are
    within twice the allowed difference may flip under float rounding (untrained weights have
    many) and are left out (``decided_fraction`` says how many are kept)."""
    tolerance = LOGIT_TOLERANCE if tolerance is None else tolerance
    got_labels = got.dim() == 3
    shape = expected.argmax(1).shape if got_labels else expected.shape
    if tuple(got.shape) != tuple(shape):
        raise ValueError(f"exported output has shape {tuple(got.shape)}, expected {tuple(shape)}")
    scale = expected.abs().max().item()
    figures = {"logit_scale": scale}
    labels = got.to(torch.int64) if got_labels else got.argmax(1)
    same = expected.argmax(1) == labels
    if not got_labels:
        diff = (expected - got.to(expected)).abs().max().item()
        figures.update(max_abs_diff=diff, max_rel_diff=diff / max(1.0, scale),
                       argmax_agreement_all=same.double().mean().item())
    if expected.shape[1] > 1:
        top2 = expected.topk(2, dim=1).values
        decided = top2[:, 0] - top2[:, 1] > 2 * allowed_diff(expected, tolerance)
    else:
        decided = torch.ones_like(same)
    figures["argmax_agreement"] = same[decided].double().mean().item() if decided.any() else 1.0
    figures["decided_fraction"] = decided.double().mean().item()
    return figures


def passes(figures: Dict[str, float], tolerance: Optional[float] = None) -> bool:
    tolerance = LOGIT_TOLERANCE if tolerance is None else tolerance
    return (figures.get("max_rel_diff", 0.0) <= tolerance
            and figures["argmax_agreement"] >= MIN_ARGMAX_AGREEMENT)


def verify_export(module: nn.Module, fmt: str, path: str, sizes: Sequence[Tuple[int, int, int]],
                  seed: int = 0, tolerance: Optional[float] = None,
                  ) -> Tuple[bool, Dict[str, Dict[str, float]]]:
    """Runs the exported file and ``module`` on random 0-255 images of each (N, H, W) in
    ``sizes``; returns whether all pass (:func:`passes` with ``tolerance``, default
    :data:`LOGIT_TOLERANCE`, relative to the logits' scale) and the figures per size."""
    g = torch.Generator().manual_seed(seed)
    run = load_exported(fmt, path)
    results, ok = {}, True
    for n, h, w in sizes:
        image = torch.rand(n, 3, h, w, generator=g) * 255
        labels, module.labels = module.labels, False  # compared on PyTorch's logits
        try:
            with torch.no_grad():
                expected = module(image)
        finally:
            module.labels = labels
        figures = compare(expected, run(image), tolerance)
        results[f"{n}x3x{h}x{w}"] = figures
        ok = ok and passes(figures, tolerance)
    return ok, results


def remove_quietly(path: str) -> None:
    """Deletes a file that failed its check (nothing half-good is left behind)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
