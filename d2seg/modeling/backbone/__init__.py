from .resnet import build_dilated_resnet_backbone  # noqa: F401
