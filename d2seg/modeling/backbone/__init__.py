from .resnet import build_dilated_resnet_backbone  # noqa: F401
from .hrnet import build_hrnet_backbone  # noqa: F401
from .mit import build_mit_backbone  # noqa: F401
from .fast_scnn import build_fast_scnn_backbone  # noqa: F401
from .mobilenet_v3 import build_mobilenet_v3_backbone  # noqa: F401
from .bisenetv2 import build_bisenetv2_backbone  # noqa: F401
from .swin import build_swin_backbone  # noqa: F401
from .stdc import build_stdc_backbone  # noqa: F401
