"""NonLocal head (mmseg's ``NLHead``): an FCN head with a non-local block after its first conv."""
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.non_local import NonLocal2d
from .fcn import FCNHead

__all__ = ["NLHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class NLHead(FCNHead):
    """convs[0] -> NonLocal2d(``reduction``, ``use_scale``, ``mode``; its ``conv_out`` uses the
    head's norm) -> convs[1] (-> conv_cat) -> classifier."""

    @configurable
    def __init__(self, input_shape, *, reduction: int = 2, use_scale: bool = True,
                 mode: str = "embedded_gaussian", num_convs: int = 2, **kwargs):
        if num_convs != 2:  # mmseg fixes num_convs=2: the block sits between the two convs
            raise ValueError(f"NLHead needs NUM_CONVS=2, got {num_convs}")
        super().__init__(input_shape, num_convs=2, **kwargs)
        self.nl_block = NonLocal2d(self.channels, reduction, use_scale, norm=self.norm, mode=mode)

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        node = cfg.MODEL.NL_HEAD
        ret.update(reduction=node.REDUCTION, use_scale=node.USE_SCALE, mode=node.MODE)
        return ret

    def context(self, x):
        return self.nl_block(x)
