from .resnet import build_dilated_resnet_backbone  # noqa: F401
from .hrnet import build_hrnet_backbone  # noqa: F401
from .mit import build_mit_backbone  # noqa: F401
