"""Segmentation losses with MMSegmentation's reduction."""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["cross_entropy", "ohem_pixel_weight", "pixel_accuracy"]


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_value: int = 255,
    class_weight: Optional[torch.Tensor] = None,
    avg_non_ignore: bool = False,
    weight: Optional[torch.Tensor] = None,
    use_sigmoid: bool = False,
) -> torch.Tensor:
    """Pixel-wise cross-entropy as mmseg's ``CrossEntropyLoss``.

    mmseg (``avg_non_ignore=False``, its default) divides the summed loss by *all* pixels, ignored
    ones included, whereas ``F.cross_entropy(reduction="mean")`` divides by the non-ignored pixels
    (or by their class weights). Class weights scale each pixel's loss and are not renormalised.
    ``weight`` (N x H x W, e.g. :func:`ohem_pixel_weight`) multiplies each pixel's loss before
    the same reduction, as mmseg's ``weight_reduce_loss``.
    """
    if use_sigmoid:
        return _binary_cross_entropy(logits, target, ignore_value, class_weight,
                                     avg_non_ignore, weight)
    loss = F.cross_entropy(
        logits, target, weight=class_weight, reduction="none", ignore_index=ignore_value
    )
    if weight is not None:
        loss = loss * weight
    if not avg_non_ignore:
        return loss.mean()
    num_valid = (target != ignore_value).sum()
    return loss.sum() / (num_valid + torch.finfo(torch.float32).eps)


def _binary_cross_entropy(logits, target, ignore_value, class_weight, avg_non_ignore, weight):
    """``use_sigmoid=True`` (mmseg's ``binary_cross_entropy``, Fast-SCNN): a sigmoid BCE per
    class against the one-hot label, ignored pixels weighted 0, averaged over all N x C x H x W
    values (``avg_non_ignore``: over the non-ignored ones). No class weights: mmseg 0.30 passes
    them as ``pos_weight``, which broadcasts along the width."""
    if class_weight is not None:
        raise ValueError("cross_entropy with use_sigmoid=True takes no class_weight")
    num_classes = logits.shape[1]
    valid = (target != ignore_value) & (target >= 0)
    onehot = F.one_hot(target.masked_fill(~valid, 0), num_classes).permute(0, 3, 1, 2)
    pixel_weight = valid.to(logits.dtype) if weight is None else weight * valid
    loss = F.binary_cross_entropy_with_logits(logits, onehot.to(logits.dtype), reduction="none")
    loss = loss * pixel_weight.unsqueeze(1)
    if not avg_non_ignore:
        return loss.mean()
    return loss.sum() / (valid.sum() * num_classes + torch.finfo(torch.float32).eps)


@torch.no_grad()
def ohem_pixel_weight(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    min_kept: int,
    thresh: Optional[float] = None,
    ignore_value: int = 255,
    class_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """mmseg's ``OHEMPixelSampler.sample``: 1.0 at the pixels the loss keeps, 0.0 elsewhere.

    Among the non-ignored pixels it keeps ``min_kept`` per image: with ``thresh=None`` those of
    highest cross-entropy; with a ``thresh``, every pixel whose true-class probability is below
    ``max(thresh, the (min_kept * N)-th lowest probability)``. Invalid pixels are sorted last
    instead of being dropped (mmseg's boolean indexing): the same selection without a host sync.
    """
    batch_kept = min_kept * target.shape[0]
    valid = target != ignore_value
    if thresh is None:
        loss = F.cross_entropy(
            logits, target, weight=class_weight, reduction="none", ignore_index=ignore_value
        )
        order = loss.masked_fill(~valid, -1.0).flatten().argsort(descending=True)
        weight = torch.zeros(target.numel(), dtype=logits.dtype, device=logits.device)
        weight[order[:batch_kept]] = 1.0
        return weight.view(target.shape) * valid
    label = target.masked_fill(~valid, 0).unsqueeze(1)
    prob = F.softmax(logits, dim=1).gather(1, label).squeeze(1)
    ranked = prob.masked_fill(~valid, float("inf")).flatten().sort().values
    # the min(batch_kept, num_valid - 1)-th lowest probability (0 when nothing is valid)
    k = (valid.sum() - 1).clamp(min=0, max=batch_kept)
    kth = torch.where(valid.any(), ranked[k], ranked.new_zeros(()))
    return ((prob < kth.clamp(min=thresh)) & valid).to(logits.dtype)


@torch.no_grad()
def pixel_accuracy(logits: torch.Tensor, target: torch.Tensor, ignore_value: int = 255) -> torch.Tensor:
    """Top-1 accuracy (in %) over non-ignored pixels: mmseg's ``acc_seg`` log value."""
    valid = target != ignore_value
    correct = (logits.argmax(1) == target) & valid
    return correct.sum().float() * 100.0 / valid.sum().clamp(min=1)
