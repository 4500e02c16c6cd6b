"""``SemSegPredictor``: one image in, its label map out, with the config's test pipeline (like
Detectron2's ``DefaultPredictor``)."""
import dataclasses
from typing import Dict, Union

import numpy as np
import torch

from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .checkpoint import SegCheckpointer
from .data.mappers import build_test_augmentations
from .data.mappers.semseg_mapper import image_to_tensor
from .modeling import SemanticSegmentorWithTTA
from .modeling.speed import SpeedOptions, optimize_for_inference

__all__ = ["SemSegPredictor"]


class SemSegPredictor:
    """Builds ``cfg``'s model, loads ``MODEL.WEIGHTS`` and runs mmseg's test pipeline on one
    H x W x 3 uint8 image: keep-ratio resize to ``INPUT.TEST_IMG_SCALE`` (cv2, as mmcv),
    normalisation, whole or slide inference (``TEST.MODE``), multi-scale + flip when
    ``TEST.AUG.ENABLED``, logits resized back to the image's size.

    It is fast by default: eval mode, BN folded into the convs, fused attention and the config's
    other ``MODEL.SPEED`` options (:func:`optimize_for_inference`), under
    ``torch.inference_mode``.
    The label map is what ``tools/train_net.py --eval-only`` predicts for the same image.

    With ``model_file`` (a ``model.onnx`` of ``tools/export_model.py``, fp32 or INT8) the
    network is that file, run by ONNX Runtime on the CPU with ``threads`` intra-op threads (0:
    its default) (:class:`d2seg.export.onnx_runtime.OnnxSegmentor`); ``MODEL.WEIGHTS`` is not
    read, and the rest of the test pipeline is the same. Outputs are then on the CPU.

    Example::

        predictor = SemSegPredictor(cfg)
        labels = predictor(cv2.imread("a.jpg"))                       # H x W int64, BGR input
        labels, probs = predictor(rgb, input_format="RGB", return_probs=True)  # + C x H x W
        predictor = SemSegPredictor(cfg, model_file="export/model.onnx", threads=4)
    """

    def __init__(self, cfg, model_file: str = "", threads: int = 0):
        self.cfg = cfg.clone()
        if model_file:
            from .export.onnx_runtime import OnnxSegmentor  # onnxruntime: the deploy extra

            self.model = OnnxSegmentor(model_file, self.cfg, threads=threads)
            if self.model.outputs_labels and cfg.TEST.AUG.ENABLED:
                raise ValueError(f"{model_file} outputs labels: TEST.AUG averages "
                                 "probabilities; export without --labels")
        else:
            if cfg.MODEL.WEIGHTS.endswith(".onnx"):
                raise ValueError(f"MODEL.WEIGHTS={cfg.MODEL.WEIGHTS} is an exported graph, not "
                                 "weights: SemSegPredictor(cfg, model_file=...) runs it")
            self.model = self._build_model(self.cfg)
        self.input_format = cfg.INPUT.FORMAT
        self.tta = SemanticSegmentorWithTTA(self.cfg, self.model) if cfg.TEST.AUG.ENABLED \
            else None
        # the TTA views are resized from the original image by the TTA mapper
        self.augmentations = T.AugmentationList([] if self.tta else
                                                build_test_augmentations(self.cfg))

    @staticmethod
    def _build_model(cfg):
        model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            # an mmseg checkpoint's classes/palette are checked against the test set's
            dataset = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else ""
            SegCheckpointer(model, dataset=dataset).load(cfg.MODEL.WEIGHTS)
        # the config's MODEL.SPEED with fused attention on (scaled_dot_product_attention: the
        # same maths within float rounding, tested within 1e-4 of the plain model)
        options = dataclasses.replace(SpeedOptions.from_config(cfg), fused_attention=True)
        return optimize_for_inference(model, options)

    def __call__(self, image: np.ndarray, input_format: str = "BGR",
                 return_probs: bool = False) -> Union[torch.Tensor, tuple]:
        """``image``: H x W x 3 uint8 in ``input_format`` ("BGR", OpenCV's order and
        ``DefaultPredictor``'s default, or "RGB"). Returns the H x W int64 label map and, with
        ``return_probs``, the C x H x W softmax probabilities, both on the model's device."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("SemSegPredictor takes an H x W x 3 numpy array, got "
                             f"{type(image).__name__} of shape {getattr(image, 'shape', None)}")
        if image.dtype != np.uint8:
            raise ValueError(f"SemSegPredictor takes uint8 images (0-255), got {image.dtype}")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input_format={input_format!r} must be 'BGR' or 'RGB'")
        if input_format != self.input_format:
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.augmentations(aug_input)
        inputs: Dict = {"image": image_to_tensor(aug_input.image), "height": height,
                        "width": width}
        with torch.inference_mode():
            out = (self.tta or self.model)([inputs])[0]["sem_seg"]
            labels = out.argmax(0)
            if not return_probs:
                return labels
            if getattr(self.model, "outputs_labels", False):
                raise ValueError(f"{self.model.path} outputs labels, not logits: no "
                                 "probabilities (export without --labels)")
            # TTA already averages probabilities; the plain model returns logits
            probs = out if self.tta else out.softmax(0)
            return labels, probs
