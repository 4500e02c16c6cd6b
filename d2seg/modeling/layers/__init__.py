from .conv import conv_norm_act, init_conv_module  # noqa: F401
from .scale import Scale  # noqa: F401
from .psa_mask import PSAMask, psa_mask  # noqa: F401
from .criss_cross import CrissCrossAttention  # noqa: F401
