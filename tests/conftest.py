import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# tools/mmseg_peer.py: MMSegmentation as the reference of the parity tests
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
