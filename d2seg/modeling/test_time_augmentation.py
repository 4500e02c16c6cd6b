"""Multi-scale + flip test-time augmentation, as mmseg's ``aug_test`` (``--aug-test``)."""
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.mappers.tta import SemSegTTAMapper

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """Wraps a segmentor (EncoderDecoder or a subclass) for test-time augmentation, like
    Mask2Former's ``SemanticSegmentorWithTTA``.

    Each input's views come from ``tta_mapper`` (its ``resized_images`` and ``flips``; default:
    :class:`SemSegTTAMapper` from ``INPUT.TEST_IMG_SCALE`` x ``TEST.AUG.RATIOS``, flipped when
    ``TEST.AUG.FLIP``): each scale is resized on the host, moved to the model's device once and
    flipped there. Every view
    is inferred in the model's test mode (whole / slide), its logits resized to the original
    size, turned into probabilities (softmax), un-flipped, and the probabilities are averaged
    over the views (mmseg's ``EncoderDecoder.inference`` + ``aug_test``). Returns
    ``[{"sem_seg": C x height x width probabilities}]``: argmax gives mmseg's prediction.
    The inputs must hold the original image (see ``Trainer.build_tta_test_loader``).
    """

    def __init__(self, cfg, model: nn.Module, tta_mapper=None):
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else SemSegTTAMapper(cfg)

    def forward(self, batched_inputs: List[Dict]) -> List[Dict]:
        return [self._inference_one(x) for x in batched_inputs]

    @torch.no_grad()
    def _inference_one(self, inp: Dict) -> Dict:
        image = inp["image"]
        size = {"height": inp.get("height", image.shape[-2]),
                "width": inp.get("width", image.shape[-1])}
        device = self.model.device
        probs, n = None, 0
        # each scale crosses to the device once (uint8), and is flipped there
        for resized in self.tta_mapper.resized_images(inp):
            resized = resized.to(device, non_blocking=True)
            for flip in self.tta_mapper.flips():
                view = {"image": resized.flip(-1) if flip else resized, **size}
                # one at a time (sizes differ; mmseg sums in place to save memory)
                p = F.softmax(self.model([view])[0]["sem_seg"], dim=0)
                if flip:
                    p = p.flip(dims=(2,))
                probs = p if probs is None else probs.add_(p)
                n += 1
        return {"sem_seg": probs / n}
