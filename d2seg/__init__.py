"""d2seg: MMSegmentation's semantic-segmentation model zoo as a Detectron2 plugin.

Importing d2seg registers its meta-architectures, backbones, decode heads and datasets in
Detectron2's registries and catalogs; nothing else happens at import time.
"""
from .utils.dependencies import check_detectron2_version, check_torch_version

check_torch_version()  # before anything imports torch features d2seg relies on
check_detectron2_version()

from . import data, modeling, solver  # noqa: F401,E402  (registration; solver: its SOLVER keys)
from .config import add_d2seg_config  # noqa: E402
from . import model_zoo  # noqa: F401,E402  (d2seg.model_zoo.get(name, trained=True))
from .predictor import SemSegPredictor  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_d2seg_config", "SemSegPredictor", "__version__"]
