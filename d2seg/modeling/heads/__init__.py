"""Decode heads, registered in SEM_SEG_HEADS_REGISTRY under MMSegmentation's class names."""
from .base import BaseDecodeHead  # noqa: F401
from .fcn import FCNHead  # noqa: F401
from .psa import PSAHead  # noqa: F401
from .cc import CCHead  # noqa: F401
from .psp import PSPHead  # noqa: F401
from .aspp import ASPPHead  # noqa: F401
from .sep_aspp import DepthwiseSeparableASPPHead  # noqa: F401
from .uper import UPerHead  # noqa: F401
