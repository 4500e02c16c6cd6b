from .trainer import Trainer, check_config, setup_cfg  # noqa: F401
