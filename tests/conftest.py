import os
import sys

import pytest
import torch

# the built-in dataset's root is read when d2seg is imported: one copy in the repo, whatever the cwd
os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets"))
sys.path.insert(0, os.path.dirname(__file__))
# dev/: MMSegmentation as the reference of the parity tests (mmseg_peer.py) and the
# development tools that need it (generate_configs.py, build_checkpoint_table.py, ...)
for _folder in ("tools", "dev"):  # the tests import user tools and development helpers by name
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), _folder))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
