"""An exported ``model.onnx`` (fp32 or INT8) run with ONNX Runtime in place of the PyTorch model
(or an INT8 OpenVINO IR, ``model_int8.xml``, run with OpenVINO).

:class:`OnnxSegmentor` takes Detectron2's list of dicts like ``EncoderDecoder`` in inference
(``image``: C x H x W, INPUT.FORMAT, 0-255, after the test mapper's resize; ``height``/``width``:
the original size) and returns ``[{"sem_seg": C x height x width}]``, so the test loader, the
evaluator (``inference_on_dataset``), ``SemanticSegmentorWithTTA`` and ``SemSegPredictor`` use
it unchanged. The graph holds the normalisation and takes RGB 0-255 float32 N x C x H x W
(:mod:`d2seg.export.wrapper`); what is outside it is done here as the model does: slide windows
(TEST.MODE "slide") and the bilinear resize of the logits back to the original size.
"""
import json
import os
import time
from typing import Dict, List, Optional

import torch

from ..modeling.heads.base import resize
from ..modeling.meta_arch.encoder_decoder import EncoderDecoder
from .openvino_int8 import OpenVinoRunner, is_openvino_file

__all__ = ["OnnxSegmentor"]


class OnnxSegmentor:
    """Runs ``path`` with ONNX Runtime (``providers``, default the CPU execution provider,
    ``threads`` intra-op threads, 0 = ONNX Runtime's default) with ``cfg``'s test settings:
    ``INPUT.FORMAT`` (the format of the images it is given), ``TEST.MODE``/``CROP_SIZE``/
    ``STRIDE``, ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` (checked against the graph) and
    ``ALIGN_CORNERS`` (the final resize).

    A graph exported with ``--labels`` gives labels: they are resized back with nearest
    neighbours (the model resizes logits; the two differ along class borders) and returned as
    one-hot scores, so ``argmax`` works but they are no probabilities.
    ``seconds``/``images`` accumulate the time spent in ONNX Runtime.
    """

    def __init__(self, path: str, cfg, threads: int = 0, providers=("CPUExecutionProvider",)):
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: exported graphs take RGB, and "
                             "d2seg converts from 'RGB' or 'BGR' only")
        if threads < 0:
            raise ValueError(f"threads={threads} must be >= 0 (0: the runtime's default)")
        if is_openvino_file(path):  # an OpenVINO IR (tools/export_model.py --int8-backend)
            runner = OpenVinoRunner(path, threads)
            input_shapes, output_shape = runner.inputs, runner.outputs[0]
            self._run_array = runner
        else:
            input_shapes, output_shape = self._onnx_session(path, threads, providers)
        self.path, self.threads = path, threads
        if (len(input_shapes) != 1 or len(input_shapes[0]) != 4
                or input_shapes[0][1] not in (3, "3")):
            raise ValueError(f"{path}: not a d2seg export: it takes {input_shapes}, expected one "
                             "N x 3 x H x W RGB image (tools/export_model.py --format onnx)")
        self.input_hw = [d if isinstance(d, int) else None for d in input_shapes[0][2:]]
        self.outputs_labels = len(output_shape) == 3
        self.info = self._read_export_json(path)
        self.num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        graph_classes = None if self.outputs_labels else output_shape[1]
        if not isinstance(graph_classes, int):
            graph_classes = self.info.get("num_classes")
        if isinstance(graph_classes, int) and graph_classes != self.num_classes:
            raise ValueError(f"{path} outputs {graph_classes} classes but the config has "
                             f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={self.num_classes}")
        self.flip_channels = cfg.INPUT.FORMAT == "BGR"  # the graph takes RGB
        self.align_corners = cfg.MODEL.SEM_SEG_HEAD.ALIGN_CORNERS
        self.test_mode = cfg.TEST.MODE
        self.test_crop_size, self.test_stride = tuple(cfg.TEST.CROP_SIZE), tuple(cfg.TEST.STRIDE)
        self.device = torch.device("cpu")  # where sem_seg is returned (SemanticSegmentorWithTTA)
        self.seconds, self.images = 0.0, 0

    def _onnx_session(self, path: str, threads: int, providers):
        """Opens ``path`` with ONNX Runtime; the input shapes and the output shape."""
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("running an ONNX file needs onnxruntime: pip install "
                              "'d2seg[deploy]'") from e
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=list(providers))
        except Exception as e:  # InvalidProtobuf, InvalidGraph, ...
            raise ValueError(f"{path}: not an ONNX model ONNX Runtime can load "
                             f"({type(e).__name__}: {e})") from e
        name = self.session.get_inputs()[0].name
        self._run_array = lambda x: self.session.run(None, {name: x})[0]
        return ([i.shape for i in self.session.get_inputs()],
                self.session.get_outputs()[0].shape)

    @staticmethod
    def _read_export_json(path: str) -> Dict:
        """export.json written next to the file by tools/export_model.py ({} if there is none)."""
        info = os.path.join(os.path.dirname(os.path.abspath(path)), "export.json")
        if not os.path.isfile(info):
            return {}
        with open(info) as f:
            return json.load(f)

    def run(self, image: torch.Tensor) -> torch.Tensor:
        """1 x 3 x H x W RGB 0-255 -> the graph's output (1 x C x H x W logits, or 1 x H x W)."""
        h, w = image.shape[-2:]
        if any(s is not None and s != t for s, t in zip(self.input_hw, (h, w))):
            raise ValueError(
                f"{self.path} was exported for {self.input_hw[0]}x{self.input_hw[1]} (h x w) "
                f"inputs only, but the test pipeline gives {h}x{w}: export it with --dynamic")
        start = time.perf_counter()
        out = self._run_array(image.float().numpy())
        self.seconds += time.perf_counter() - start
        if not self.outputs_labels and out.shape[1] != self.num_classes:
            raise ValueError(f"{self.path} outputs {out.shape[1]} classes but the config has "
                             f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={self.num_classes}")
        return torch.from_numpy(out)

    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """The graph's output for one image at its size, slid over it in TEST.MODE "slide"."""
        if self.test_mode != "slide":
            return self.run(image)
        if self.outputs_labels:
            raise ValueError(f"{self.path} outputs labels: slide inference (TEST.MODE 'slide') "
                             "averages logits; export without --labels")
        return self.slide_inference(image)

    # the model's own window grid and averaging, with the graph as the network on a window
    encode_decode = run
    slide_inference = EncoderDecoder.slide_inference

    def __call__(self, batched_inputs: List[Dict]) -> List[Dict]:
        results = []
        for x in batched_inputs:
            image = x["image"].to("cpu").float()
            if self.flip_channels:
                image = image.flip(0)
            out = self.predict(image[None])
            self.images += 1
            size = (x.get("height", image.shape[-2]), x.get("width", image.shape[-1]))
            if self.outputs_labels:
                labels = torch.nn.functional.interpolate(out[:, None].float(), size=size,
                                                         mode="nearest")[0, 0].long()
                scores = torch.nn.functional.one_hot(labels, self.num_classes)
                results.append({"sem_seg": scores.permute(2, 0, 1).float()})
            else:
                results.append({"sem_seg": resize(out, size, self.align_corners)[0]})
        return results

    def latency_ms(self) -> Optional[float]:
        """Milliseconds per image spent in ONNX Runtime so far (None before the first)."""
        return 1000 * self.seconds / self.images if self.images else None
