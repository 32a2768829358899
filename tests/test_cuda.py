"""CUDA agrees with the CPU, and the CuPy kernels with the torch path. Runs where a GPU is
present (marked ``cuda``); CI machines have none.

Everything the first tests exercise also runs on the CPU in the rest of the suite; there only
the device differs. The last one runs whole models forward and backward with the ``"cupy"``
backend against ``"torch"`` (the neuron-level comparisons are in
``tests/neurons/test_cupy_backend.py``).
"""

import pytest
import timm
import torch

import spikezoo  # noqa: F401
from spikezoo.neurons import MultiStepLIF, MultiStepPLIF
from tests.cuda_cases import assert_model_cupy_matches_torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("backend", ["torch", "inductor", "auto"])
@pytest.mark.parametrize("neuron", [MultiStepLIF, MultiStepPLIF])
def test_neuron_on_cuda_matches_cpu(backend, neuron):
    x = torch.randn(4, 3, 1000, dtype=torch.float64) * 2
    cpu, gpu = neuron(backend="torch").double(), neuron(backend=backend).double().cuda()
    x_cpu, x_gpu = x.clone().requires_grad_(), x.cuda().requires_grad_()
    s_cpu, s_gpu = cpu(x_cpu), gpu(x_gpu)
    assert torch.equal(s_gpu.cpu(), s_cpu)
    s_cpu.sum().backward()
    s_gpu.sum().backward()
    torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad)


@pytest.mark.parametrize("name", ["sdt_2_256_cifar", "spikingresformer_cifar"])
def test_model_on_cuda_matches_cpu(name):
    model = timm.create_model(name, time_steps=2).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        got = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["sdt_2_256_cifar", "spikingresformer_cifar"])
def test_model_forward_backward_with_cupy_matches_torch(name, monkeypatch):
    pytest.importorskip(
        "cupy", reason="the cupy backend needs CuPy: pip install 'spikezoo-vit[cuda13]'"
    )
    model = timm.create_model(name, time_steps=2).cuda().eval()
    assert_model_cupy_matches_torch(model, torch.randn(4, 3, 32, 32, device="cuda"), monkeypatch)
