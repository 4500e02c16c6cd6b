from .encoder_decoder import EncoderDecoder  # noqa: F401
from .cascade import CascadeEncoderDecoder  # noqa: F401
