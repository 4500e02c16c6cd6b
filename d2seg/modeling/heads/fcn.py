"""FCN head (mmseg's ``FCNHead``); also the auxiliary head and the base of GC/NL/CC heads."""
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..layers.conv import conv_norm_act
from .base import BaseDecodeHead, head_config_node

__all__ = ["FCNHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class FCNHead(BaseDecodeHead):
    """``num_convs`` convs (kernel ``kernel_size``, dilation ``dilation``), optionally followed
    by ``conv_cat`` on ``cat([input, convs(input)])``. Subclasses insert a context module after
    the first conv by overriding :meth:`context` (GCNet, NonLocal, CCNet)."""

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        num_convs: int = 2,
        kernel_size: int = 3,
        dilation: int = 1,
        concat_input: bool = True,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        if num_convs < 0 or dilation < 1:
            raise ValueError(f"FCNHead: NUM_CONVS={num_convs} and DILATION={dilation} must be >= 0/1")
        if num_convs == 0 and self.in_channels != self.channels:
            raise ValueError(
                f"FCNHead with NUM_CONVS=0 needs CONVS_DIM ({self.channels}) equal to its input "
                f"channels ({self.in_channels})"
            )
        convs = []
        for i in range(num_convs):
            convs.append(
                conv_norm_act(
                    self.in_channels if i == 0 else self.channels,
                    self.channels,
                    kernel_size,
                    norm=self.norm,
                    dilation=dilation,
                )
            )
        self.convs = nn.Sequential(*convs)
        self.concat_input = concat_input
        if concat_input:
            self.conv_cat = conv_norm_act(
                self.in_channels + self.channels, self.channels, kernel_size, norm=self.norm
            )

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        node = head_config_node(cfg, head_cfg)
        ret.update(
            num_convs=node.NUM_CONVS,
            kernel_size=node.KERNEL_SIZE,
            dilation=node.DILATION,
            concat_input=node.CONCAT_INPUT,
        )
        return ret

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Context module between the first and the remaining convs (none in plain FCN)."""
        return x

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        feats = x
        for i, conv in enumerate(self.convs):
            feats = conv(feats)
            if i == 0:
                feats = self.context(feats)
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats
