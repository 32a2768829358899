"""One backend for a whole model: ``set_backend`` and the ``use_backend`` block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikezoo.neurons import (
    MultiStepIF,
    MultiStepLIF,
    MultiStepPLIF,
    backends,
    set_backend,
    use_backend,
)
from spikezoo.neurons.backends import Backend, eager
from spikezoo.neurons.model_backend import EAGER_MAX_FORWARD_PASSES, backend_for_work


class Net(nn.Module):
    """Neurons at several depths, each with its own backend, and a layer that is no neuron."""

    def __init__(self) -> None:
        super().__init__()
        self.first = MultiStepLIF(backend="torch")
        self.body = nn.Sequential(nn.Identity(), MultiStepPLIF(backend="auto"))
        self.last = MultiStepIF(backend="inductor")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.body(self.first(x * 4)) * 2)


def backends_of(net: nn.Module) -> list[str]:
    return [net.first.backend, net.body[1].backend, net.last.backend]


@pytest.fixture
def counted(monkeypatch):
    """A registered backend ``"counted"`` running the eager loops; the list of its calls."""
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    calls = []

    def forward(*args):
        calls.append("forward")
        return eager.forward(*args)

    backends.register_backend(
        Backend("counted", forward, eager.backward, lambda x: None), auto=False
    )
    return calls


def test_set_backend_reaches_every_neuron_and_they_run_on_it(counted):
    net = Net()
    assert set_backend(net, "counted") is net
    assert backends_of(net) == ["counted"] * 3
    with torch.no_grad():
        net(torch.rand(2, 3, 5))
    assert counted == ["forward"] * 3


def test_use_backend_restores_each_neurons_backend_on_exit(counted):
    net = Net()
    with use_backend(net, "counted") as inside:
        assert inside is net
        assert backends_of(net) == ["counted"] * 3
        with torch.no_grad():
            net(torch.rand(2, 3, 5))
    assert counted == ["forward"] * 3
    assert backends_of(net) == ["torch", "auto", "inductor"]


def test_use_backend_restores_them_after_an_exception():
    net = Net()
    with pytest.raises(RuntimeError, match="inside the block"), use_backend(net, "torch"):
        assert backends_of(net) == ["torch"] * 3
        raise RuntimeError("inside the block")
    assert backends_of(net) == ["torch", "auto", "inductor"]


def enter_use_backend(net: nn.Module, backend: str) -> None:
    with use_backend(net, backend):
        pass


@pytest.mark.parametrize("switch", [set_backend, enter_use_backend])
def test_an_unknown_backend_is_refused_by_the_registry_and_changes_nothing(switch):
    net = Net()
    pattern = r"unknown backend 'numba'; expected one of \['auto', 'cupy', 'native', 'inductor', 'torch'\]"  # noqa: E501
    with pytest.raises(ValueError, match=pattern):
        switch(net, "numba")
    assert backends_of(net) == ["torch", "auto", "inductor"]


@pytest.mark.parametrize(
    "model, error, message",
    [
        (nn.Linear(2, 2), ValueError, "model must contain spikezoo neurons .*got a Linear"),
        ("model", TypeError, "model must be a torch.nn.Module, got str"),
    ],
)
def test_a_model_without_neurons_is_refused(model, error, message):
    with pytest.raises(error, match=message):
        set_backend(model, "torch")
    with pytest.raises(error, match=message):
        enter_use_backend(model, "torch")


def test_a_job_of_a_few_forward_passes_runs_eagerly_where_auto_would_compile(monkeypatch):
    monkeypatch.delenv("SPIKEZOO_BACKEND", raising=False)
    # As on a CPU without a C compiler: "auto" compiles with inductor.
    monkeypatch.setattr(
        "spikezoo.neurons.model_backend.resolve_backend", lambda _b, _x: ("inductor", "torch")
    )
    assert backend_for_work(0, "cpu") == "torch"
    assert backend_for_work(EAGER_MAX_FORWARD_PASSES, "cpu") == "torch"
    assert backend_for_work(EAGER_MAX_FORWARD_PASSES + 1, "cpu") == "auto"  # the compile pays


def test_spikezoo_backend_decides_every_job(monkeypatch):
    monkeypatch.setenv("SPIKEZOO_BACKEND", "inductor")
    assert backend_for_work(1, "cpu") == "inductor"
    assert backend_for_work(EAGER_MAX_FORWARD_PASSES + 1, "cpu") == "inductor"
    monkeypatch.setenv("SPIKEZOO_BACKEND", "auto")  # the same as unset
    assert backend_for_work(1, "cpu") == "auto"


def test_a_job_of_few_passes_keeps_auto_on_a_cpu_with_the_c_loops(monkeypatch):
    monkeypatch.delenv("SPIKEZOO_BACKEND", raising=False)
    # the C loops of "native" compile nothing per job
    assert backend_for_work(0, "cpu") == backend_for_work(1, "cpu") == "auto"


def test_a_negative_number_of_forward_passes_is_refused():
    with pytest.raises(ValueError, match="forward_passes must be >= 0, got -1"):
        backend_for_work(-1, "cpu")


def test_a_job_of_few_passes_keeps_auto_where_auto_compiles_nothing_with_torch(monkeypatch):
    monkeypatch.delenv("SPIKEZOO_BACKEND", raising=False)
    # As on a CUDA device with CuPy: "auto" runs CuPy kernels, not torch.compile.
    monkeypatch.setattr(
        "spikezoo.neurons.model_backend.resolve_backend", lambda _b, _x: ("cupy", "torch")
    )
    assert backend_for_work(1, "cpu") == "auto"
