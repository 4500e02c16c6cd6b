"""CCNet head (mmseg's ``CCHead``): FCNHead with criss-cross attention after its first conv."""
import torch

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.criss_cross import CrissCrossAttention
from .fcn import FCNHead

__all__ = ["CCHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class CCHead(FCNHead):
    """convs[0] -> ``recurrence`` x cca -> convs[1] -> conv_cat. As in mmseg, a single
    ``CrissCrossAttention`` (one set of weights) is applied ``recurrence`` times: two passes
    let every position reach every other one through its row and column."""

    @configurable
    def __init__(self, input_shape, *, recurrence: int = 2, **kwargs):
        kwargs["num_convs"] = 2  # mmseg's CCHead forces two convs
        super().__init__(input_shape, **kwargs)
        self.recurrence = recurrence
        self.cca = CrissCrossAttention(self.channels)

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        ret["recurrence"] = cfg.MODEL.CC_HEAD.RECURRENCE
        return ret

    def context(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.recurrence):
            x = self.cca(x)
        return x
