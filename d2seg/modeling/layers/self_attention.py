"""mmseg's generic ``SelfAttentionBlock`` (mmseg/models/utils/self_attention_block.py), the
attention of ANN, DANet's PAM and OCRNet."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .conv import conv_norm_act

__all__ = ["SelfAttentionBlock", "float32_under_autocast"]


def float32_under_autocast(*tensors: torch.Tensor):
    """``(autocast-off context, tensors in float32)`` for an attention product: fp16 products
    summed over many positions or channels overflow to inf (max 65504), and the softmax then
    makes NaN. float16/bfloat16 tensors are upcast; other dtypes (float32, float64) are kept, and
    without autocast nothing changes."""
    ctx = torch.autocast(tensors[0].device.type, enabled=False)
    return ctx, [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors]


class SelfAttentionBlock(nn.Module):
    # MODEL.SPEED.FUSED_ATTENTION: softmax(q k^T) v by scaled_dot_product_attention (same maths,
    # one kernel, no Q x K matrix in memory); off by default so outputs stay bit-equal to mmseg's
    fused_attention = False

    """Attention of queries (from ``query_feats``) over keys/values (from ``key_feats``); the
    output has the spatial size of ``query_feats``.

    Arguments are mmseg's, with ``norm``/``activation`` in place of ``conv_cfg``/``norm_cfg``/
    ``act_cfg``: projections with ``*_norm=True`` are conv-``norm``-(ReLU if ``activation``)
    stacks, the others plain 1x1 convs. ``share_key_query`` makes ``query_project`` the very
    module ``key_project`` (the state_dict then holds both key sets, as mmseg's).
    ``query_downsample``/``key_downsample`` are applied after the projections (keys and values
    share ``key_downsample``). A plain single-conv ``out_project`` is zero-initialised."""

    def __init__(self, key_in_channels: int, query_in_channels: int, channels: int,
                 out_channels: int, share_key_query: bool,
                 query_downsample: Optional[nn.Module], key_downsample: Optional[nn.Module],
                 key_query_num_convs: int, value_out_num_convs: int, key_query_norm: bool,
                 value_out_norm: bool, matmul_norm: bool, with_out: bool, *,
                 norm: str = "", activation: bool = True):
        super().__init__()
        if share_key_query and key_in_channels != query_in_channels:
            raise ValueError(
                f"SelfAttentionBlock: share_key_query needs key_in_channels ({key_in_channels}) "
                f"== query_in_channels ({query_in_channels})"
            )
        self.key_in_channels = key_in_channels
        self.query_in_channels = query_in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.share_key_query = share_key_query
        self.norm = norm
        self.activation = activation
        self.key_project = self.build_project(
            key_in_channels, channels, key_query_num_convs, key_query_norm)
        if share_key_query:
            self.query_project = self.key_project
        else:
            self.query_project = self.build_project(
                query_in_channels, channels, key_query_num_convs, key_query_norm)
        self.value_project = self.build_project(
            key_in_channels, channels if with_out else out_channels, value_out_num_convs,
            value_out_norm)
        self.out_project = None
        if with_out:
            self.out_project = self.build_project(
                channels, out_channels, value_out_num_convs, value_out_norm)
            # mmseg zero-inits out_project unless it is a ConvModule (constant_init is a no-op
            # on a Sequential), so a plain single conv starts the block at zero output
            if not value_out_norm and value_out_num_convs == 1:
                nn.init.zeros_(self.out_project.weight)
                nn.init.zeros_(self.out_project.bias)
        self.query_downsample = query_downsample
        self.key_downsample = key_downsample
        self.matmul_norm = matmul_norm

    def build_project(self, in_channels: int, channels: int, num_convs: int,
                      use_conv_module: bool) -> nn.Module:
        """``num_convs`` 1x1 convs (a Sequential when more than one, as mmseg)."""
        if use_conv_module:
            convs = [
                conv_norm_act(in_channels if i == 0 else channels, channels, 1, norm=self.norm,
                              activation=self.activation)
                for i in range(num_convs)
            ]
        else:
            convs = [nn.Conv2d(in_channels if i == 0 else channels, channels, 1)
                     for i in range(num_convs)]
        return convs[0] if len(convs) == 1 else nn.Sequential(*convs)

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        context = self.attend(query_feats, key_feats)
        if self.out_project is not None:
            context = self.out_project(context)
        return context

    def attend(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        """The attention's output before ``out_project``: N x channels x (query's H x W)."""
        n = query_feats.shape[0]
        query = self.query_project(query_feats)
        if self.query_downsample is not None:
            query = self.query_downsample(query)
        # contiguous, as mmseg's: GEMMs on transposed views round differently, which OCR's
        # training-mode BN over the class centres amplifies (tests/parity/test_train_step_parity)
        query = query.reshape(*query.shape[:2], -1).transpose(1, 2).contiguous()  # N x Q x C
        key = self.key_project(key_feats)
        value = self.value_project(key_feats)
        if self.key_downsample is not None:
            key = self.key_downsample(key)
            value = self.key_downsample(value)
        key = key.reshape(*key.shape[:2], -1)  # N x C x K
        value = value.reshape(*value.shape[:2], -1).transpose(1, 2).contiguous()  # N x K x C
        if self.fused_attention:
            # contiguous rows: the CPU's fused kernel needs unit stride on the channel dim
            context = F.scaled_dot_product_attention(
                query.contiguous(), key.transpose(1, 2).contiguous(), value.contiguous(),
                scale=self.channels ** -0.5 if self.matmul_norm else 1.0).transpose(1, 2)
        else:
            # in float32 under autocast: q k^T (PAM has no 1/sqrt(d)) can pass fp16's range.
            # The fused kernels above accumulate in float32 themselves.
            ctx, (query, key, value) = float32_under_autocast(query, key, value)
            with ctx:
                sim_map = torch.matmul(query, key)
                if self.matmul_norm:
                    sim_map = (self.channels ** -0.5) * sim_map
                sim_map = sim_map.softmax(dim=-1)
                context = torch.matmul(sim_map, value).transpose(1, 2)
        # contiguous: as a view it is channels-last, and out_project's conv and BN round otherwise
        return context.contiguous().reshape(n, -1, *query_feats.shape[2:])
