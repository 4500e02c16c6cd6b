from . import handlers  # noqa: F401  (mmseg://, open-mmlab://, torchvision://, verified https://)
from .backbones import convert_backbone_state_dict, detect_backbone_format  # noqa: F401
from .catalog import imagenet_weights_for, resolve_name  # noqa: F401
from .checkpointer import SegCheckpointer, atomic_torch_save, is_mmseg_checkpoint  # noqa: F401
from .compat import CheckpointMismatchError, LoadReport, check_state_dict  # noqa: F401
from .convert import convert_mmseg_checkpoint, load_mmseg_checkpoint  # noqa: F401
from .download import ChecksumError, DownloadError  # noqa: F401
from .mmseg import convert_mmseg_state_dict  # noqa: F401
