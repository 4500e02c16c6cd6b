"""Fast-SCNN's decode head (mmseg's ``DepthwiseSeparableFCNHead``)."""
from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.separable_conv import DepthwiseSeparableConvModule
from .fcn import FCNHead

__all__ = ["DepthwiseSeparableFCNHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class DepthwiseSeparableFCNHead(FCNHead):
    """FCNHead whose convs (and ``conv_cat``) are depthwise-separable, with no ReLU after the
    depthwise part (mmseg's ``dw_act_cfg=None``); DILATION does not apply, as in mmseg."""

    @configurable
    def __init__(self, input_shape, *, kernel_size: int = 3, **kwargs):
        super().__init__(input_shape, kernel_size=kernel_size, **kwargs)
        k = kernel_size

        def sep(cin):
            return DepthwiseSeparableConvModule(cin, self.channels, k, norm=self.norm,
                                                padding=k // 2, dw_activation=False)

        for i in range(len(self.convs)):
            self.convs[i] = sep(self.in_channels if i == 0 else self.channels)
        if self.concat_input:
            self.conv_cat = sep(self.in_channels + self.channels)
