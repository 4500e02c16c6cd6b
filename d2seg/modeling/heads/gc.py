"""GCNet head (mmseg's ``GCHead``): an FCN head with a global context block after its first conv."""
from typing import Sequence

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.context_block import ContextBlock
from .fcn import FCNHead

__all__ = ["GCHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class GCHead(FCNHead):
    """convs[0] -> ContextBlock(``ratio``, ``pooling_type``, ``fusion_types``) -> convs[1]
    (-> conv_cat) -> classifier."""

    @configurable
    def __init__(self, input_shape, *, ratio: float = 0.25, pooling_type: str = "att",
                 fusion_types: Sequence[str] = ("channel_add",), num_convs: int = 2, **kwargs):
        if num_convs != 2:  # mmseg fixes num_convs=2: the block sits between the two convs
            raise ValueError(f"GCHead needs NUM_CONVS=2, got {num_convs}")
        super().__init__(input_shape, num_convs=2, **kwargs)
        self.gc_block = ContextBlock(self.channels, ratio, pooling_type, tuple(fusion_types))

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        node = cfg.MODEL.GC_HEAD
        ret.update(ratio=node.RATIO, pooling_type=node.POOLING_TYPE,
                   fusion_types=list(node.FUSION_TYPES))
        return ret

    def context(self, x):
        return self.gc_block(x)
