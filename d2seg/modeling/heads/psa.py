"""PSANet head (mmseg's ``PSAHead``): point-wise spatial attention, collect and/or distribute."""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ...export.tracing import is_exporting
from ..layers.conv import conv_norm_act
from ..layers.psa_mask import PSAMask
from .base import BaseDecodeHead, resize

__all__ = ["PSAHead"]

PSA_TYPES = ("collect", "distribute", "bi-direction")


@SEM_SEG_HEADS_REGISTRY.register()
class PSAHead(BaseDecodeHead):
    """Each branch: ``reduce`` (1x1) -> shrink by ``shrink_factor`` -> ``attention`` predicts an
    ``h_mask x w_mask`` window per position -> PSAMask places it into a dense (hw x hw) map ->
    softmax -> features x attention. Then ``proj`` (1x1, padding=1 as in mmseg), resize back,
    ``bottleneck`` (3x3) on ``cat([input, proj])``."""

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        mask_size: Tuple[int, int] = (97, 97),
        psa_type: str = "bi-direction",
        compact: bool = False,
        shrink_factor: int = 2,
        normalization_factor: float = 1.0,
        psa_softmax: bool = True,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        if psa_type not in PSA_TYPES:
            raise ValueError(f"PSA_TYPE={psa_type!r} is not one of {PSA_TYPES}")
        self.psa_type = psa_type
        self.compact = compact
        self.shrink_factor = shrink_factor
        self.mask_size = tuple(mask_size)
        mask_h, mask_w = self.mask_size
        self.psa_softmax = psa_softmax
        self.normalization_factor = normalization_factor or mask_h * mask_w  # None/0 = window

        def attention():
            return nn.Sequential(
                conv_norm_act(self.channels, self.channels, 1, norm=self.norm),
                nn.Conv2d(self.channels, mask_h * mask_w, kernel_size=1, bias=False),
            )

        self.reduce = conv_norm_act(self.in_channels, self.channels, 1, norm=self.norm)
        self.attention = attention()
        if psa_type == "bi-direction":
            self.reduce_p = conv_norm_act(self.in_channels, self.channels, 1, norm=self.norm)
            self.attention_p = attention()
            self.psamask_collect = PSAMask("collect", self.mask_size)
            self.psamask_distribute = PSAMask("distribute", self.mask_size)
        else:
            self.psamask = PSAMask(psa_type, self.mask_size)
        # padding=1 on a 1x1 conv (mmseg's quirk, kept for its numbers): the map grows by 1 px
        # on each side and is resized back to the input size in layers().
        self.proj = conv_norm_act(
            self.channels * (2 if psa_type == "bi-direction" else 1), self.in_channels, 1,
            norm=self.norm, padding=1,
        )
        self.bottleneck = conv_norm_act(self.in_channels * 2, self.channels, 3, norm=self.norm)

    @classmethod
    def from_config(cls, cfg, input_shape, head_cfg=None, loss_name="loss_sem_seg"):
        ret = super().from_config(cfg, input_shape, head_cfg, loss_name)
        node = cfg.MODEL.PSA_HEAD
        ret.update(
            mask_size=tuple(node.MASK_SIZE),
            psa_type=node.PSA_TYPE,
            compact=node.COMPACT,
            shrink_factor=node.SHRINK_FACTOR,
            normalization_factor=node.NORMALIZATION_FACTOR,
            psa_softmax=node.PSA_SOFTMAX,
        )
        return ret

    def shrunk_size(self, h: int, w: int):
        """Size after shrinking and the align_corners of its resizes. mmseg: when both sides
        are odd (not divisible), (s - 1) // f + 1 with align_corners=True (corner pixels stay
        aligned); otherwise s // f with align_corners=False."""
        f = self.shrink_factor
        if f == 1:
            return h, w, self.align_corners
        if h % f and w % f:
            return (h - 1) // f + 1, (w - 1) // f + 1, True
        return h // f, w // f, False

    def resizers(self, x: torch.Tensor):
        """(shrink, grow): resize a map to the shrunk size of ``x`` and back to ``x``'s size,
        with :meth:`shrunk_size`'s align_corners. While exporting, the odd/even test must stay
        in the graph (an ONNX ``If``), so it runs in :func:`_psa_resize`, scripted."""
        if is_exporting() and self.shrink_factor > 1:
            f = self.shrink_factor
            return lambda t: _psa_resize(t, x, f, True), lambda t: _psa_resize(t, x, f, False)
        h, w, align_corners = self.shrunk_size(*x.shape[2:])
        return (lambda t: resize(t, (h, w), align_corners),
                lambda t: resize(t, x.shape[2:], align_corners))

    def _attend(self, feat, attention, psamask, transpose_compact: bool):
        n, c, h, w = feat.shape
        y = attention(feat)
        if self.compact:
            if transpose_compact:  # compact 'collect' / bi-direction's distribute branch
                y = y.reshape(n, h * w, h * w).transpose(1, 2).reshape(n, h * w, h, w)
        else:
            y = psamask(y)
        if self.psa_softmax:
            y = F.softmax(y, dim=1)
        out = torch.bmm(feat.reshape(n, c, h * w), y.reshape(n, h * w, h * w))
        return out.reshape(n, c, h, w) * (1.0 / self.normalization_factor)

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        shrink, grow = self.resizers(x)
        if self.psa_type == "bi-direction":
            x_col = shrink(self.reduce(x))
            x_dis = shrink(self.reduce_p(x))
            out = torch.cat([
                self._attend(x_col, self.attention, self.psamask_collect, False),
                self._attend(x_dis, self.attention_p, self.psamask_distribute, True),
            ], dim=1)
        else:
            feat = shrink(self.reduce(x))
            out = self._attend(feat, self.attention, self.psamask, self.psa_type == "collect")
        out = grow(self.proj(out))
        return self.bottleneck(torch.cat([x, out], dim=1))


@torch.jit.script_if_tracing
def _psa_resize(t: torch.Tensor, ref: torch.Tensor, factor: int, shrink: bool) -> torch.Tensor:
    """:meth:`PSAHead.shrunk_size`'s rule (``factor`` > 1) on ``ref``'s size, for exported
    graphs: ``t`` resized to the shrunk size (``shrink``) or back to ``ref``'s size. Each
    branch has its own constant align_corners (ONNX's Resize mode is an attribute)."""
    h, w = ref.shape[2], ref.shape[3]
    if h % factor != 0 and w % factor != 0:
        if shrink:
            h, w = (h - 1) // factor + 1, (w - 1) // factor + 1
        return F.interpolate(t, size=[h, w], mode="bilinear", align_corners=True)
    if shrink:
        h, w = h // factor, w // factor
    return F.interpolate(t, size=[h, w], mode="bilinear", align_corners=False)
