"""MMSegmentation's ``CascadeEncoderDecoder`` with two stages (OCRNet)."""
from typing import Dict

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from .encoder_decoder import EncoderDecoder, build_head, feature_shape

__all__ = ["CascadeEncoderDecoder"]


@META_ARCH_REGISTRY.register()
class CascadeEncoderDecoder(EncoderDecoder):
    """Backbone -> ``cascade_head`` (stage 0, MODEL.CASCADE_HEAD, loss ``loss_cascade``) ->
    ``decode_head`` (stage 1, MODEL.SEM_SEG_HEAD), which also reads stage 0's logits through
    ``forward(features, targets, prev_output)``. Output, align_corners and classes are stage 1's.
    mmseg's ``decode_head.0`` / ``decode_head.1`` keys are ``cascade_head`` / ``decode_head``."""

    @configurable
    def __init__(self, *, cascade_head: torch.nn.Module, **kwargs):
        super().__init__(**kwargs)
        self.cascade_head = cascade_head
        self.speed.apply(self)  # MODEL.SPEED over the stage-0 head too (the base applied it before)

    @classmethod
    def from_config(cls, cfg):
        if not cfg.MODEL.CASCADE_HEAD.NAME:
            raise ValueError("CascadeEncoderDecoder needs MODEL.CASCADE_HEAD.NAME (stage 0)")
        ret = super().from_config(cfg)
        ret["cascade_head"] = build_head(
            cfg, feature_shape(ret["backbone"], ret["neck"]), cfg.MODEL.CASCADE_HEAD, "loss_cascade"
        )
        return ret

    def compute_losses(self, features, targets) -> Dict[str, torch.Tensor]:
        _, losses = self.cascade_head(features, targets)
        # As mmseg: stage 0 runs a second time (its forward_test, still in training mode, so
        # dropout and BN statistics act again) and stage 1 reads those logits, not detached.
        prev_output = self.cascade_head(features)[0]
        losses.update(self.decode_head(features, targets, prev_output=prev_output)[1])
        for head in self.auxiliary_heads:
            losses.update(head(features, targets)[1])
        return losses

    def decode(self, features) -> torch.Tensor:
        return self.decode_head(features, prev_output=self.cascade_head(features)[0])[0]
