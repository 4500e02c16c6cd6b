from .conv import conv_norm_act, init_conv_module  # noqa: F401
