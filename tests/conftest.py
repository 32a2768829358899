import os

import pytest
import torch

# Neurons left at backend="auto" run eagerly in the tests, so that the suite does not spend its
# minutes compiling a kernel per model, shape and dtype. The compiled backends are tested where
# a test names them; `SPIKEZOO_BACKEND=auto python -m pytest` runs everything as users do.
os.environ.setdefault("SPIKEZOO_BACKEND", "torch")
# The commands that tests run in this process leave its allocator as glibc sets it (a command
# run as users run it keeps freed memory: spikezoo.runtime); tests of that set the variable.
os.environ["SPIKEZOO_KEEP_FREED_MEMORY"] = "0"


@pytest.fixture
def auto_backend_as_users_have_it(monkeypatch):
    """For tests of what ``"auto"`` chooses: ``SPIKEZOO_BACKEND`` unset."""
    monkeypatch.delenv("SPIKEZOO_BACKEND", raising=False)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def maps_read(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes that neurons read through a BatchNorm's map (``forward_normalised`` of the
    binary and the integer neurons), at every size: ``MAP_FROM_VALUES`` is set to 0."""
    from spikezoo.layers import bn_neuron
    from spikezoo.neurons import IntegerNeuron, MultiStepNeuron

    monkeypatch.setattr(bn_neuron, "MAP_FROM_VALUES", 0)
    shapes = []
    for cls in (MultiStepNeuron, IntegerNeuron):

        def counted(neuron, x, normalisation, read=cls.forward_normalised):
            shapes.append(tuple(x.shape))
            return read(neuron, x, normalisation)

        monkeypatch.setattr(cls, "forward_normalised", counted)
    return shapes
