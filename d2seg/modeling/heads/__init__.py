"""Decode heads, registered in SEM_SEG_HEADS_REGISTRY under MMSegmentation's class names."""
from .base import BaseDecodeHead  # noqa: F401
from .fcn import FCNHead  # noqa: F401
