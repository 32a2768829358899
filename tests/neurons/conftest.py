import shutil

import pytest

from tests.cuda_cases import load_host_library


@pytest.fixture(scope="session")
def host():
    """The CUDA source's per-neuron functions compiled for the CPU (ctypes library)."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    return load_host_library(gxx)
