"""d2seg's model zoo: the configs of configs/ (MMSegmentation's zoo, one yaml per mmseg config),
shipped with the package. See docs/model_zoo.md."""
from .model_zoo import get, get_checkpoint_url, get_config, get_config_file, list_configs

__all__ = ["get", "get_checkpoint_url", "get_config", "get_config_file", "list_configs"]
