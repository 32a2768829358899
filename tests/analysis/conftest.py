"""Fixtures of the analysis tests."""

import pytest
import torch


@pytest.fixture
def images():
    """A fixed batch of two images ``[2, 3, 32, 32]``."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
