"""mmcv's ``Scale``: a learnable scalar multiplier (``Scale(0)`` gates a residual branch)."""
import torch
from torch import nn

__all__ = ["Scale"]


class Scale(nn.Module):
    """``x * scale`` with a learnable 0-d parameter ``scale`` (mmcv's name, for checkpoints)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
