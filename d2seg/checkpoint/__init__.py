from .mmseg import convert_mmseg_state_dict  # noqa: F401
