"""Decode heads, registered in SEM_SEG_HEADS_REGISTRY under MMSegmentation's class names."""
from .base import BaseDecodeHead  # noqa: F401
from .fcn import FCNHead  # noqa: F401
from .psa import PSAHead  # noqa: F401
from .cc import CCHead  # noqa: F401
from .psp import PSPHead  # noqa: F401
from .aspp import ASPPHead  # noqa: F401
from .sep_aspp import DepthwiseSeparableASPPHead  # noqa: F401
from .uper import UPerHead  # noqa: F401
from .gc import GCHead  # noqa: F401
from .nl import NLHead  # noqa: F401
from .da import DAHead  # noqa: F401
from .ann import ANNHead  # noqa: F401
from .ocr import OCRHead  # noqa: F401
from .segformer import SegformerHead  # noqa: F401
from .sep_fcn import DepthwiseSeparableFCNHead  # noqa: F401
from .lraspp import LRASPPHead  # noqa: F401
from .stdc import STDCHead  # noqa: F401
