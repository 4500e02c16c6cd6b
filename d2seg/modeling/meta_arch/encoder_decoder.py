"""MMSegmentation's ``EncoderDecoder`` as a Detectron2 meta-architecture."""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, build_backbone

from ...config import add_head_node_keys, check_detectron2_keys, register_config_keys
from ..heads.base import resize
from ..necks import build_neck
from ..speed import SpeedOptions, autocast_context

__all__ = ["EncoderDecoder", "build_head", "feature_shape", "pad_batch", "slide_windows"]

# mmseg's list of auxiliary heads, in its order (checkpoint keys auxiliary_head.{i}):
# MODEL.AUX_HEAD, then AUX_HEAD_2 (Fast-SCNN's second), AUX_HEAD_3, AUX_HEAD_4 (BiSeNetV2's four)
AUX_HEAD_NODES = (("AUX_HEAD", "loss_aux"),) + tuple(
    (f"AUX_HEAD_{i}", f"loss_aux_{i}") for i in (2, 3, 4))


@register_config_keys
def add_aux_head_n_keys(keys):
    # more auxiliary heads, each on its own feature; NAME "" = none
    for node, _ in AUX_HEAD_NODES[1:]:
        # (keeps the keys a head family added to the node, e.g. SETR's UP_SCALE)
        keys.MODEL[node] = add_head_node_keys(
            keys.MODEL.get(node, CN()), NAME="", IN_FEATURES=["res3"], CONVS_DIM=256,
            NUM_CONVS=1, CONCAT_INPUT=False, LOSS_WEIGHT=0.4,
        )


def build_head(cfg, input_shape, head_cfg, loss_name: str) -> nn.Module:
    """Builds the head named ``head_cfg.NAME`` with the settings of ``head_cfg``."""
    return SEM_SEG_HEADS_REGISTRY.get(head_cfg.NAME)(
        cfg, input_shape, head_cfg=head_cfg, loss_name=loss_name
    )


def feature_shape(backbone: nn.Module, neck: Optional[nn.Module]):
    """ShapeSpecs of the features the heads read: the neck's outputs, else the backbone's."""
    return (neck or backbone).output_shape()


def pad_batch(tensors: Sequence[torch.Tensor], min_size, size_divisibility: int, value: float):
    """Stacks C x H x W (or H x W) tensors into one batch, padding bottom/right with ``value`` to
    at least ``min_size`` (mmseg pads each training crop to the crop size) and to a multiple of
    ``size_divisibility``."""
    h = max([t.shape[-2] for t in tensors] + [min_size[0]])
    w = max([t.shape[-1] for t in tensors] + [min_size[1]])
    if size_divisibility > 1:
        h = -(-h // size_divisibility) * size_divisibility
        w = -(-w // size_divisibility) * size_divisibility
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], h, w), value)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-2], : t.shape[-1]].copy_(t)
    return out


def slide_windows(h: int, w: int, crop_size, stride):
    """mmseg's sliding-window grid: (y1, y2, x1, x2) of each window, the last one of a row or
    column shifted back to end at the border; windows are clipped to images smaller than a crop."""
    (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2, x2 = min(hi * h_stride + h_crop, h), min(wi * w_stride + w_crop, w)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


@META_ARCH_REGISTRY.register()
class EncoderDecoder(nn.Module):
    """Backbone (-> neck) -> decode head (+ auxiliary heads, trained only).

    Input: Detectron2's list of dicts with ``image`` (C x H x W, INPUT.FORMAT, 0-255, uint8 from
    d2seg's mappers; normalised here, on the model's device) and, when
    training, ``sem_seg`` (H x W long, ``ignore_value`` = ignore). Training returns the loss dict;
    inference returns ``[{"sem_seg": C x height x width logits}]`` like Detectron2's
    ``SemanticSegmentor``, so its evaluators and Visualizer work unchanged.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: Optional[nn.Module] = None,
        decode_head: nn.Module,
        auxiliary_heads: Sequence[nn.Module] = (),
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ignore_value: int = 255,
        train_pad_size=(0, 0),
        size_divisibility: int = 0,
        test_mode: str = "whole",
        test_crop_size=(769, 769),
        test_stride=(513, 513),
        speed: Optional[SpeedOptions] = None,
    ):
        super().__init__()
        if test_mode not in ("whole", "slide"):
            raise ValueError(f"TEST.MODE={test_mode!r} must be 'whole' or 'slide'")
        if test_mode == "slide" and (min(test_crop_size) <= 0 or min(test_stride) <= 0):
            raise ValueError(
                f"slide inference needs positive TEST.CROP_SIZE and TEST.STRIDE, got "
                f"{list(test_crop_size)} and {list(test_stride)}"
            )
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.auxiliary_heads = nn.ModuleList(auxiliary_heads)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.ignore_value = ignore_value
        self.train_pad_size = tuple(train_pad_size)
        self.size_divisibility = size_divisibility
        self.test_mode = test_mode
        self.test_crop_size = tuple(test_crop_size)
        self.test_stride = tuple(test_stride)
        # mmseg copies align_corners from the decode head for the final resize.
        self.align_corners = decode_head.align_corners
        self.num_classes = decode_head.num_classes
        # MODEL.SPEED is a build step (d2seg.modeling.speed): applied here, before build_model
        # returns and DDP / torch.compile wrap the model; a subclass with more heads applies it
        # again once they exist (idempotent)
        self.speed = speed or SpeedOptions()
        self.speed.apply(self)

    @classmethod
    def from_config(cls, cfg):
        check_detectron2_keys(cfg)
        backbone = build_backbone(cfg)
        neck = build_neck(cfg, backbone.output_shape())
        shape = feature_shape(backbone, neck)
        aux = []
        for i, (node, loss_name) in enumerate(AUX_HEAD_NODES):
            if cfg.MODEL[node].NAME:
                # head i must be auxiliary_heads.{i}, as mmseg's checkpoint key
                if len(aux) != i:
                    prev = AUX_HEAD_NODES[i - 1][0]
                    raise ValueError(f"MODEL.{node}.NAME is set but MODEL.{prev}.NAME is not: "
                                     "fill the auxiliary heads in order")
                aux.append(build_head(cfg, shape, cfg.MODEL[node], loss_name))
        if len(aux) > 1:
            # mmseg keeps a list of auxiliary heads in a plain nn.ModuleList, which its
            # init_weights skips: their classifiers keep torch's default init, not N(0, 0.01)
            for head in aux:
                if isinstance(getattr(head, "conv_seg", None), nn.Conv2d):
                    head.conv_seg.reset_parameters()
        crop = cfg.INPUT.CROP
        if crop.ENABLED and crop.TYPE != "absolute":
            raise ValueError(f"INPUT.CROP.TYPE={crop.TYPE!r}: d2seg crops are 'absolute' (h, w)")
        return {
            "backbone": backbone,
            "neck": neck,
            "decode_head": build_head(cfg, shape, cfg.MODEL.SEM_SEG_HEAD, "loss_sem_seg"),
            "auxiliary_heads": aux,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "train_pad_size": tuple(crop.SIZE) if crop.ENABLED else (0, 0),
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
            "test_mode": cfg.TEST.MODE,
            "test_crop_size": cfg.TEST.CROP_SIZE,
            "test_stride": cfg.TEST.STRIDE,
            "speed": SpeedOptions.from_config(cfg),
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """C x H x W image (uint8 from the mappers, or float) -> normalised float32 on the model's
        device: the host sends 1 byte per value, the device converts and normalises."""
        image = image.to(self.device, non_blocking=True)
        return (image.float() - self.pixel_mean) / self.pixel_std

    # ---- training ------------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return self.inference(batched_inputs)
        if "sem_seg" not in batched_inputs[0]:
            raise ValueError("EncoderDecoder in training mode needs 'sem_seg' in each input dict")
        # Normalise before padding, so padded pixels are 0 as in mmseg (Normalize -> Pad).
        images = pad_batch(
            [self.normalize(x["image"]) for x in batched_inputs],
            self.train_pad_size, self.size_divisibility, 0.0,
        )
        targets = pad_batch(
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            self.train_pad_size, self.size_divisibility, self.ignore_value,
        )
        return self.compute_losses(self.extract_feat(images), targets)

    def extract_feat(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Backbone features, through the neck when there is one (mmseg's extract_feat)."""
        features = self.backbone(images)
        return features if self.neck is None else self.neck(features)

    def compute_losses(self, features, targets) -> Dict[str, torch.Tensor]:
        _, losses = self.decode_head(features, targets)
        for head in self.auxiliary_heads:
            losses.update(head(features, targets)[1])
        return losses

    # ---- inference -----------------------------------------------------------------------------
    def decode(self, features) -> torch.Tensor:
        """Logits of the decode head at its output stride."""
        return self.decode_head(features)[0]

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised N x C x H x W images -> logits resized to H x W (mmseg's encode_decode)."""
        return resize(self.decode(self.extract_feat(images)), images.shape[-2:], self.align_corners)

    def slide_inference(self, images: torch.Tensor) -> torch.Tensor:
        """Overlapping windows; each pixel's logits are the mean over the windows covering it."""
        n, _, h, w = images.shape
        logits = images.new_zeros((n, self.num_classes, h, w))
        count = images.new_zeros((1, 1, h, w))
        for y1, y2, x1, x2 in slide_windows(h, w, self.test_crop_size, self.test_stride):
            logits[:, :, y1:y2, x1:x2] += self.encode_decode(images[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
        return logits / count

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the size of ``images`` (normalised, N x C x H x W) in the test mode."""
        if self.test_mode == "slide":
            return self.slide_inference(images)
        return self.encode_decode(images)

    def inference(self, batched_inputs: List[Dict]):
        """One image at a time, unpadded, as mmseg tests; logits resized to (height, width)."""
        results = []
        for x in batched_inputs:
            image = self.normalize(x["image"])[None]
            with autocast_context(self.speed.amp_dtype, self.device):
                logits = self.predict_logits(image).float()
            out_size = (x.get("height", image.shape[-2]), x.get("width", image.shape[-1]))
            results.append({"sem_seg": resize(logits, out_size, self.align_corners)[0]})
        return results
