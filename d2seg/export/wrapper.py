"""The module that is exported: ``image`` (N x 3 x H x W float32, RGB, 0-255) -> ``logits``
(N x C x H x W, the model's ``sem_seg`` for each image) or ``labels`` (N x H x W int64).

Normalisation (PIXEL_MEAN/STD, and the RGB -> BGR flip for an INPUT.FORMAT "BGR" model) is in
the graph, so a deployment only converts its image to float. Whole-mode inference: a slide-mode
config exports the network that runs on one window (docs/deployment.md shows how to slide).
"""
import copy

import torch
from torch import nn

from ..modeling.fuse import fuse_conv_bn

__all__ = ["SegmentationExportModule", "check_exportable", "plain_for_export"]


class SegmentationExportModule(nn.Module):
    def __init__(self, model: nn.Module, input_format: str = "RGB", labels: bool = False):
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={input_format!r}: export supports 'RGB' and 'BGR'")
        self.model = model
        self.flip_channels = input_format == "BGR"
        self.labels = labels
        self.eval()

    def train(self, mode: bool = True):
        """Always in eval mode: the exporters restore the caller's mode after tracing, which
        would otherwise switch dropout and BN back to training."""
        return super().train(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.flip_channels:  # the graph takes RGB whatever the model was trained on
            image = image.flip(1)
        logits = self.model.encode_decode((image - self.model.pixel_mean) / self.model.pixel_std)
        return logits.argmax(1) if self.labels else logits


def check_exportable(model: nn.Module) -> None:
    """Raises naming the first module that cannot go into an exported graph: MODEL.SPEED's CPU
    kernels (Winograd, 1x1 GEMMs, tap convs: autograd Functions and preallocated workspaces
    tuned for PyTorch's CPU) and torch.compile'd forwards."""
    for name, m in model.named_modules():
        if type(m).__module__.startswith("d2seg.cpu_kernels"):
            raise ValueError(
                f"module {name or 'model'} is {type(m).__name__}, a MODEL.SPEED CPU kernel "
                "(WINOGRAD / GEMM_1X1): it does not export. Export a model built with "
                "MODEL.SPEED.WINOGRAD '' and MODEL.SPEED.GEMM_1X1 False (export_model.py does)"
            )
        if getattr(m, "_d2seg_compiled", False):
            raise ValueError(f"module {name or 'model'} is torch.compile'd (MODEL.SPEED.COMPILE): "
                             "export a model built with MODEL.SPEED.COMPILE False")
        if getattr(m, "fold_projections", False):
            raise ValueError(f"module {name or 'model'} has MODEL.SPEED.FOLD_PROJECTIONS on, "
                             "which runs a CPU GEMM kernel: export with it off")


def plain_for_export(model: nn.Module, fuse_bn: bool = True) -> nn.Module:
    """A copy of ``model`` in eval mode with BN folded into the convs (exact to float
    rounding, and fewer nodes), checked by :func:`check_exportable`."""
    model = copy.deepcopy(model).eval()
    if fuse_bn:
        fuse_conv_bn(model, inplace_relu=False)
    check_exportable(model)
    return model
