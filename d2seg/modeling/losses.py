"""Segmentation losses with MMSegmentation's reduction."""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy", "pixel_accuracy"]


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_value: int = 255,
    class_weight: Optional[torch.Tensor] = None,
    avg_non_ignore: bool = False,
) -> torch.Tensor:
    """Pixel-wise cross-entropy as mmseg's ``CrossEntropyLoss``.

    mmseg (``avg_non_ignore=False``, its default) divides the summed loss by *all* pixels, ignored
    ones included, whereas ``F.cross_entropy(reduction="mean")`` divides by the non-ignored pixels
    (or by their class weights). Class weights scale each pixel's loss and are not renormalised.
    """
    loss = F.cross_entropy(
        logits, target, weight=class_weight, reduction="none", ignore_index=ignore_value
    )
    if not avg_non_ignore:
        return loss.mean()
    num_valid = (target != ignore_value).sum()
    return loss.sum() / (num_valid + torch.finfo(torch.float32).eps)


@torch.no_grad()
def pixel_accuracy(logits: torch.Tensor, target: torch.Tensor, ignore_value: int = 255) -> torch.Tensor:
    """Top-1 accuracy (in %) over non-ignored pixels: mmseg's ``acc_seg`` log value."""
    valid = target != ignore_value
    correct = (logits.argmax(1) == target) & valid
    return correct.sum().float() * 100.0 / valid.sum().clamp(min=1)
