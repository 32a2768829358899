import sys
from pathlib import Path

import pytest
import torch

# tests/reference.py is a helper module shared by several test files.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
