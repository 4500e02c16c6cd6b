from .resnet import build_dilated_resnet_backbone  # noqa: F401
from .hrnet import build_hrnet_backbone  # noqa: F401
from .mit import build_mit_backbone  # noqa: F401
from .fast_scnn import build_fast_scnn_backbone  # noqa: F401
from .mobilenet_v3 import build_mobilenet_v3_backbone  # noqa: F401
from .bisenetv2 import build_bisenetv2_backbone  # noqa: F401
from .swin import build_swin_backbone  # noqa: F401
from .stdc import build_stdc_backbone  # noqa: F401
from .erfnet import build_erfnet_backbone  # noqa: F401
from .cgnet import build_cgnet_backbone  # noqa: F401
from .mobilenet_v2 import build_mobilenet_v2_backbone  # noqa: F401
from .twins import build_pcpvt_backbone, build_svt_backbone  # noqa: F401
from .convnext import build_convnext_backbone  # noqa: F401
from .vit import build_vit_backbone  # noqa: F401
from .poolformer import build_poolformer_backbone  # noqa: F401
from .icnet import build_icnet_backbone  # noqa: F401
from .bisenetv1 import build_bisenetv1_backbone  # noqa: F401
from .beit import build_beit_backbone, build_mae_backbone  # noqa: F401
