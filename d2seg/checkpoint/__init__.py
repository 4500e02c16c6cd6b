from .checkpointer import SegCheckpointer, atomic_torch_save, is_mmseg_checkpoint  # noqa: F401
from .mmseg import convert_mmseg_state_dict  # noqa: F401
