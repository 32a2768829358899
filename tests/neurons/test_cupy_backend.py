"""The ``"cupy"`` backend: its choice, its errors, and its results against the ``"torch"`` path.

Without a GPU, CuPy is replaced by a stand-in whose "kernels" run the host build of the very
per-neuron functions the CUDA kernels call (see ``cuda_cases.load_host_library``), with the
arguments the backend launches them with. That checks the backend's Python side on the CPU:
argument order and types, null pointers, strides, the dtype dispatch, one thread for the
gradient finish, the stream it launches on, and compile-once caching, through the public API
and the autograd function, against the eager path. The tests marked ``cuda`` run the real
kernels on a GPU.
"""

from __future__ import annotations

import builtins
import ctypes
import functools
import re
import sys
import types
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import spikezoo  # noqa: F401  (registers the models)
from spikezoo.neurons import MultiStepLIF, multistep_if, multistep_lif, multistep_plif
from spikezoo.neurons import backends as registry
from spikezoo.neurons.backends import cupy as cupy_backend
from spikezoo.neurons.dynamics import NeuronConfig
from tests.cuda_cases import (
    CONFIG_NAMES,
    CONFIGS,
    DTYPES,
    STORAGE_CODE,
    SURROGATE_ALPHA,
    V_RESET,
    V_THRESHOLD,
    assert_model_cupy_matches_torch,
    decay,
    make_config,
    random_case,
)
from tests.models.families import tiny

# these tests are about what "auto" chooses (tests/conftest.py sets SPIKEZOO_BACKEND)
pytestmark = pytest.mark.usefixtures("auto_backend_as_users_have_it")

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fake_input(dtype=torch.float32):
    """What ``unavailable_reason`` looks at in a CUDA tensor, for a machine without one."""
    return SimpleNamespace(is_cuda=True, dtype=dtype, device=torch.device("cuda", 0))


class FakeCompileError(Exception):
    """Stands in for ``cupy.cuda.compiler.CompileException``."""


def fake_cupy(runtime_version: int = 13000, get_function=None) -> types.ModuleType:
    """A ``cupy`` module with what the backend uses; ``get_function(name)`` makes kernels."""
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "14.0.0"
    cupy.modules, cupy.devices = [], []

    class RawModule:
        def __init__(self, code, options, name_expressions):
            self.code, self.options, self.names = code, options, name_expressions
            cupy.modules.append(self)

        def get_function(self, name):
            assert name in self.names
            assert cupy.devices, "a kernel loaded outside its device's context"
            return get_function(name)

    @contextmanager
    def device(index):
        cupy.devices.append(index)
        yield
        cupy.devices.pop()

    cupy.RawModule = RawModule
    cupy.ndarray = type("ndarray", (), {})  # einops looks for it once cupy is imported
    cupy.cuda = SimpleNamespace(
        runtime=SimpleNamespace(runtimeGetVersion=lambda: runtime_version),
        compiler=SimpleNamespace(CompileException=FakeCompileError),
        Device=device,
    )
    return cupy


@pytest.fixture
def use_cupy(monkeypatch):
    """``use_cupy(module)`` makes ``import cupy`` give ``module`` (None: not installed)."""

    def install(module, torch_cuda="13.0"):
        monkeypatch.setitem(sys.modules, "cupy", module)
        monkeypatch.setattr(torch.version, "cuda", torch_cuda)
        for cache in (cupy_backend._import_cupy, cupy_backend._module, cupy_backend._stream):
            cache.cache_clear()

    yield install
    for cache in (cupy_backend._import_cupy, cupy_backend._module, cupy_backend._stream):
        cache.cache_clear()


# ---------------------------------------------------------------- choice and errors


def test_cpu_tensor_with_explicit_cupy_is_an_error_naming_the_device():
    x = torch.ones(2, 3)
    message = (
        r"backend='cupy' cannot run here: it runs on CUDA tensors only, but the input is on cpu"
    )
    with pytest.raises(RuntimeError, match=message):
        multistep_lif(x, backend="cupy")
    with pytest.raises(RuntimeError, match=message):
        MultiStepLIF(backend="cupy")(x)
    assert torch.equal(x, torch.ones(2, 3))


def test_without_cupy_the_error_names_the_extras_and_auto_skips_it(use_cupy):
    use_cupy(None)
    extras = re.escape("pip install 'spikezoo-vit[cuda12]' or 'spikezoo-vit[cuda13]'")
    message = f"backend='cupy' cannot run here: CuPy is not installed: {extras}"
    with pytest.raises(RuntimeError, match=message):
        registry.resolve_backend("cupy", fake_input())
    assert registry.resolve_backend("auto", fake_input()) == ("inductor", "torch")


def test_a_broken_cupy_install_is_reported_with_its_error(use_cupy, monkeypatch):
    use_cupy(None)
    monkeypatch.delitem(sys.modules, "cupy")
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "cupy":
            raise ImportError("libnvrtc.so.13: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(RuntimeError, match=r"CuPy could not be imported \(ImportError: libnvrtc"):
        registry.resolve_backend("cupy", fake_input())


def test_cupy_built_for_another_cuda_major_version_is_refused(use_cupy):
    use_cupy(fake_cupy(runtime_version=12080), torch_cuda="13.0")
    message = re.escape(
        "CuPy 14.0.0 is built for CUDA 12 but PyTorch for CUDA 13: "
        "replace it with pip install 'spikezoo-vit[cuda13]'"
    )
    with pytest.raises(RuntimeError, match=message):
        registry.resolve_backend("cupy", fake_input())
    assert "cupy" not in registry.resolve_backend("auto", fake_input())


def test_auto_prefers_working_cupy_for_cuda_tensors_only(use_cupy):
    use_cupy(fake_cupy())
    assert registry.resolve_backend("auto", fake_input()) == ("cupy", "inductor", "torch")
    assert registry.resolve_backend("auto", fake_input(torch.bfloat16))[0] == "cupy"
    cpu = ("native", "inductor", "torch")
    assert registry.resolve_backend("auto", torch.ones(2, 3)) == cpu
    assert registry.resolve_backend("auto", fake_input(torch.float64)) == ("inductor", "torch")
    message = r"it supports float32, float16, bfloat16 inputs, not float64"
    with pytest.raises(RuntimeError, match=message):
        registry.resolve_backend("cupy", fake_input(torch.float64))


def test_a_failing_nvrtc_compile_is_one_clear_error(use_cupy):
    def broken(name):
        raise FakeCompileError('neurons.cu(42): error: expected a ";"\n1 error detected')

    use_cupy(fake_cupy(get_function=broken))
    cfg = make_config("lif", True, 0.0, True, "sigmoid")
    x, v, k = torch.ones(2, 3), torch.zeros(3), torch.tensor(0.5)
    pattern = r"NVRTC could not compile the spikezoo CUDA neurons \(.*neurons\.cu, spikezoo::forward_kernel<float, true, true, false, true, 0>\):\nneurons\.cu\(42\): error"  # noqa: E501
    with pytest.raises(cupy_backend.CudaCompileError, match=pattern) as caught:
        cupy_backend.forward(x, v, k, cfg, True)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    # Named explicitly, the error propagates; under "auto" the next backend runs.
    with pytest.raises(cupy_backend.CudaCompileError):
        registry.run_forward(("cupy",), x, v, k, cfg, True)
    name, (spikes, _, _) = registry.run_forward(("cupy", "torch"), x, v, k, cfg, True)
    assert name == "torch" and spikes.shape == x.shape


def test_a_registered_surrogate_has_no_kernel():
    cfg = NeuronConfig(True, True, 1.0, 0.0, "triangle", 1.0, True)
    pattern = r"backend 'cupy' has kernels for the surrogates \['atan', 'sigmoid'\], not 'triangle'"
    with pytest.raises(ValueError, match=pattern):
        cupy_backend.forward(torch.ones(2, 3), torch.zeros(()), torch.tensor(0.5), cfg, False)


# ---------------------------------------------------------------- SPIKEZOO_BACKEND


def test_environment_backend_replaces_auto_but_not_an_explicit_name(monkeypatch):
    x = torch.ones(2, 3)
    monkeypatch.setenv("SPIKEZOO_BACKEND", "torch")
    assert registry.resolve_backend("auto", x) == ("torch",)
    assert registry.resolve_backend("inductor", x) == ("inductor",)
    monkeypatch.setenv("SPIKEZOO_BACKEND", " ")
    assert registry.resolve_backend("auto", x) == ("native", "inductor", "torch")


def test_environment_backend_is_used_as_if_named(monkeypatch):
    """Like an explicit name: unavailable is an error, and a failure is not replaced."""
    monkeypatch.setenv("SPIKEZOO_BACKEND", "cupy")
    with pytest.raises(RuntimeError, match=r"backend='cupy' cannot run here: .* on cpu"):
        multistep_lif(torch.ones(2, 3))

    def failing(*args):
        raise RuntimeError("inductor exploded")

    broken = registry.Backend("inductor", failing, failing, lambda x: None)
    monkeypatch.setitem(registry._REGISTRY, "inductor", broken)
    monkeypatch.setenv("SPIKEZOO_BACKEND", "inductor")
    with pytest.raises(RuntimeError, match="inductor exploded"):
        multistep_lif(torch.ones(2, 3))
    monkeypatch.setenv("SPIKEZOO_BACKEND", "torch")
    assert multistep_lif(torch.full((2, 3), 1.5)).sum() == 3  # h = 0.75, then 1.125 fires


def test_environment_backend_with_an_unknown_name_is_an_error(monkeypatch):
    monkeypatch.setenv("SPIKEZOO_BACKEND", "triton")
    pattern = r"environment variable SPIKEZOO_BACKEND='triton' names no backend; expected one of \['auto', 'cupy', 'native', 'inductor', 'torch'\]"  # noqa: E501
    with pytest.raises(ValueError, match=pattern):
        multistep_lif(torch.ones(2, 3))


# ---------------------------------------------------------------- host-emulated kernels


@functools.cache
def kernel_parameter_types() -> dict[str, list[type]]:
    """Kernel role -> the numpy scalar type that passes each C++ parameter by value."""
    c_types = {"long long": np.int64, "float": np.float32, "double": np.float64}
    kernels = re.findall(
        r"__global__ void (\w+)_kernel\(([^)]*)\)", cupy_backend.SOURCE.read_text()
    )
    assert len(kernels) == 4
    return {
        role: [
            np.uint64 if "*" in param else c_types[param.rsplit(maxsplit=1)[0].strip()]
            for param in params.split(",")
        ]
        for role, params in kernels
    }


class HostKernel:
    """A compiled-kernel stand-in: runs the host build of kernel ``name`` with the launch's
    arguments, which must have the types of the kernel's C++ parameters."""

    def __init__(self, lib: ctypes.CDLL, name: str, streams: list):
        match = re.fullmatch(r"spikezoo::(\w+)_kernel<(.*)>", name)
        self.lib, self.role, self.streams = lib, match[1], streams
        template = [arg.strip() for arg in match[2].split(",")]
        if self.role != "finish_grad_k":
            storage = template.pop(0)
            dtype = {v: k for k, v in cupy_backend.STORAGE_TYPES.items()}[storage]
            self.dtype_code = STORAGE_CODE[dtype]
        self.flags = [arg == "true" for arg in template[:4]] + [int(template[4])]
        self.launches = []

    def __call__(self, grid, block, args):
        assert self.streams and self.streams[-1] == "entered", "launched outside the stream"
        self.launches.append((grid, block, args))
        assert [type(arg) for arg in args] == kernel_parameter_types()[self.role]
        pointer = [int(a) or None if isinstance(a, np.uint64) else a for a in args]
        if self.role == "finish_grad_k":
            assert grid == (1,) and block == (1,), "the finish kernel must run one thread"
            k = ctypes.c_float.from_address(pointer[0]).value
            assert self.lib.spikezoo_finish_grad_k(*self.flags, k, pointer[1]) == 0
            return
        assert block[0] % 32 == 0 and grid[0] * block[0] >= int(args[-1])
        k_index = 3 if self.role == "forward" else 6
        pointer[k_index] = ctypes.c_float.from_address(pointer[k_index]).value
        steps, neurons, rest = pointer[-2], pointer[-1], pointer[:-2]
        run = getattr(self.lib, f"spikezoo_{self.role}")
        assert run(*self.flags, self.dtype_code, steps, neurons, *rest) == 0


TORCH_STREAM_HANDLE = 0x5EED


@pytest.fixture
def emulated_cupy(host, use_cupy, monkeypatch):
    """Backend ``"cupy"`` running the host build on CPU tensors; returns the fake module."""
    streams: list = []
    kernels: dict[str, HostKernel] = {}

    def get_function(name):
        return kernels.setdefault(name, HostKernel(host, name, streams))

    cupy = fake_cupy(get_function=get_function)
    cupy.kernels = kernels

    class StreamContext:  # entered at every launch, as CuPy's streams are
        def __enter__(self):
            streams.append("entered")

        def __exit__(self, *exc):
            streams.append("left")

    def from_external(stream):
        # the handle of PyTorch's current stream, through the CUDA stream protocol
        assert stream.__cuda_stream__() == (0, TORCH_STREAM_HANDLE), "another stream"
        return StreamContext()

    cupy.cuda.Stream = SimpleNamespace(from_external=from_external)
    # raising=False: a CPU-only build of torch has no such function
    monkeypatch.setattr(
        torch._C, "_cuda_getCurrentRawStream", lambda index: TORCH_STREAM_HANDLE, raising=False
    )
    use_cupy(cupy)
    available = registry.Backend(
        "cupy",
        cupy_backend.forward,
        cupy_backend.backward,
        lambda x: None,
        cupy_backend.backward_from_input,
    )
    monkeypatch.setitem(registry._REGISTRY, "cupy", available)
    return cupy


def run_neuron(backend, config, x, v_init, grad_spikes, grad_v):
    """Spikes, final membrane and the gradients of ``sum(spikes * grad_spikes) + sum(v *
    grad_v)`` for ``x``, ``v_init`` and (PLIF) ``w``, through the public functions."""
    kind, decay_input, v_reset, detach_reset, surrogate = config
    x = x.detach().clone().requires_grad_()
    v_init = v_init.detach().clone().requires_grad_()
    w = torch.tensor(-0.6, device=x.device, requires_grad=True)
    kwargs = {
        "v_threshold": V_THRESHOLD,
        "v_reset": v_reset,
        "surrogate": surrogate,
        "alpha": SURROGATE_ALPHA[surrogate],
        "detach_reset": detach_reset,
        "v_init": v_init,
        "return_state": True,
        "backend": backend,
    }
    if kind == "plif":
        spikes, v_final = multistep_plif(x, w, decay_input=decay_input, **kwargs)
    elif kind == "lif":
        spikes, v_final = multistep_lif(x, tau=1.7, decay_input=decay_input, **kwargs)
    else:
        spikes, v_final = multistep_if(x, **kwargs)
    ((spikes * grad_spikes).sum() + (v_final * grad_v).sum()).backward()
    return spikes, v_final, x.grad, v_init.grad, w.grad


def assert_same_as_torch_backend(config, dtype, device, seed, steps=6):
    cfg, k = make_config(*config), decay(config[0])
    case = [t.to(device) for t in random_case(cfg, k, dtype, seed, steps)]
    got = run_neuron("cupy", config, *case)
    expected = run_neuron("torch", config, *case)
    assert torch.equal(got[0], expected[0])
    assert 0.05 < got[0].float().mean() < 0.95
    torch.testing.assert_close(got[1], expected[1], rtol=1e-6, atol=1e-6)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(got[2], expected[2], **tolerance, msg="dL/dx")
    torch.testing.assert_close(got[3], expected[3], rtol=1e-5, atol=1e-6, msg="dL/dv_init")
    if config[0] == "plif":
        torch.testing.assert_close(got[4], expected[4], rtol=1e-4, atol=1e-4, msg="dL/dw")
    else:
        assert got[4] is None and expected[4] is None


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(CONFIG_NAMES, CONFIGS)
def test_emulated_backend_matches_torch_backend(
    emulated_cupy, kind, decay_input, v_reset, detach_reset, surrogate, dtype
):
    config = (kind, decay_input, v_reset, detach_reset, surrogate)
    seed = len(CONFIGS) * DTYPES.index(dtype) + CONFIGS.index(config)
    assert_same_as_torch_backend(config, dtype, torch.device("cpu"), seed)
    roles = {kernel.role for kernel in emulated_cupy.kernels.values() if kernel.launches}
    expected = {"forward", "backward_from_input"} | ({"finish_grad_k"} if kind == "plif" else set())
    assert roles == expected


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_emulated_training_keeps_the_input_and_recharges_from_it(emulated_cupy, dtype):
    """A training forward writes the spikes alone and keeps its input (no float32 membranes);
    the backward kernel recharges from it, over the thread's own array (16 steps) and over the
    gradient's buffer (20 steps), with the gradients of the torch backend."""
    x = torch.randn(3, 2, 50).to(dtype).requires_grad_()
    node = multistep_lif(x, backend="cupy").grad_fn
    while type(node).__name__ != "MultiStepDynamicsBackward":  # past the reshaping views
        node = node.next_functions[0][0]
    saved = node.saved_tensors
    assert saved[0].data_ptr() == x.data_ptr() and saved[0].dtype == dtype
    assert all(t.numel() <= 1 for t in saved[1:])  # v_init and k
    config = ("plif", True, V_RESET, False, "atan")
    for steps in (16, 20):
        assert_same_as_torch_backend(config, dtype, torch.device("cpu"), seed=steps, steps=steps)
    launched = {kernel.role for kernel in emulated_cupy.kernels.values() if kernel.launches}
    assert launched == {"forward", "backward_from_input", "finish_grad_k"}


@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_emulated_backend_nan_input_like_torch_backend(emulated_cupy, kind):
    """A NaN input spikes NaN from then on, with NaN gradients, as on the torch backend."""
    x = torch.randn(5, 4) + 1.0
    x[2, 1] = float("nan")
    case = (x, torch.zeros(4), torch.ones(5, 4), torch.ones(4))
    config = (kind, True, 0.0, True, "sigmoid")
    got, expected = run_neuron("cupy", config, *case), run_neuron("torch", config, *case)
    assert got[0][2:, 1].isnan().all()
    for a, b in zip(got, expected, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_emulated_backend_reads_channels_last_and_scalar_state_in_place(emulated_cupy):
    """A channels-last map is read where it lies (no copy); a default ``v_init`` and an
    unused final membrane are passed as scalars (stride 0); inference keeps no membranes."""
    x = (torch.randn(3, 2, 5, 6, 4) + 0.5).permute(0, 1, 4, 2, 3)  # [T, B, C, H, W], C last
    with torch.no_grad():
        spikes = multistep_lif(x, backend="cupy")
    expected = multistep_lif(x, backend="torch")
    assert torch.equal(spikes, expected) and spikes.stride() == x.stride()
    ((_, _, forward_args),) = emulated_cupy.kernels[
        cupy_backend.kernel_names(make_config("lif", True, 0.0, True, "sigmoid"))[
            "forward", torch.float32
        ]
    ].launches
    assert int(forward_args[0]) == x.data_ptr()  # x itself, not a copy
    assert int(forward_args[2]) == 0  # v_init: one value for all neurons
    assert int(forward_args[7]) == 0  # no charged membranes kept


def test_emulated_kernels_write_no_final_membrane_or_its_gradient_unless_asked(emulated_cupy):
    """Without ``return_state`` the forward kernel gets a null final membrane, and a backward
    pass whose ``v_init`` needs no gradient a null ``dL/dv_init``: the kernels write neither.
    Asked for, both are written, and equal the torch backend's."""
    config = ("lif", True, V_RESET, True, "sigmoid")
    cfg = make_config(*config)
    names = cupy_backend.kernel_names(cfg)

    def last_launch(role: str) -> tuple:
        return emulated_cupy.kernels[names[role, torch.float32]].launches[-1][2]

    lif = {"tau": 1.7, "v_threshold": V_THRESHOLD, "v_reset": V_RESET}  # the config's
    x = (torch.randn(4, 2, 30) + 0.8).requires_grad_()
    spikes = multistep_lif(x, **lif, backend="cupy")
    spikes.sum().backward()
    assert int(last_launch("forward")[8]) == 0  # v_final
    assert int(last_launch("backward_from_input")[11]) == 0  # dL/dv_init
    reference_x = x.detach().clone().requires_grad_()
    reference = multistep_lif(reference_x, **lif, backend="torch")
    reference.sum().backward()
    assert torch.equal(spikes, reference)
    torch.testing.assert_close(x.grad, reference_x.grad, rtol=1e-5, atol=1e-6)
    direct = cupy_backend.forward(
        x.detach().flatten(1),
        torch.tensor(V_RESET),  # at rest
        torch.tensor(1 / 1.7),
        cfg,
        False,
        final_needed=False,
    )
    assert direct[2] is None and torch.equal(direct[0], spikes.detach().flatten(1))

    case = random_case(cfg, decay("lif"), torch.float32, 3, 6)
    got, expected = run_neuron("cupy", config, *case), run_neuron("torch", config, *case)
    assert int(last_launch("forward")[8]) != 0
    assert int(last_launch("backward_from_input")[11]) != 0
    torch.testing.assert_close(got[1], expected[1], rtol=1e-6, atol=1e-6, msg="v_final")
    torch.testing.assert_close(got[3], expected[3], rtol=1e-5, atol=1e-6, msg="dL/dv_init")


def test_emulated_backend_compiles_once_per_configuration(emulated_cupy):
    x = torch.randn(4, 10)
    for threshold in (1.0, 0.5):  # thresholds are arguments, not configurations
        multistep_lif(x, v_threshold=threshold, backend="cupy")
        multistep_if(x, v_threshold=threshold, backend="cupy")
        multistep_if(x.half(), v_threshold=threshold, backend="cupy")
    assert len(emulated_cupy.modules) == 2
    assert all(module.options == cupy_backend.NVRTC_OPTIONS for module in emulated_cupy.modules)
    assert emulated_cupy.modules[0].code == cupy_backend.SOURCE.read_text()


def test_emulated_backend_runs_a_model_forward_and_backward(emulated_cupy, monkeypatch):
    model = tiny("spike_driven_transformer").eval()
    assert_model_cupy_matches_torch(model, torch.randn(2, 3, 32, 32), monkeypatch)
    assert sum(len(kernel.launches) for kernel in emulated_cupy.kernels.values()) > 20


# ---------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(CONFIG_NAMES, CONFIGS)
def test_cupy_matches_torch_backend_on_gpu(
    kind, decay_input, v_reset, detach_reset, surrogate, dtype
):
    config = (kind, decay_input, v_reset, detach_reset, surrogate)
    seed = len(CONFIGS) * DTYPES.index(dtype) + CONFIGS.index(config)
    assert_same_as_torch_backend(config, dtype, torch.device("cuda"), seed)


@pytest.mark.cuda
@needs_gpu
def test_cupy_is_chosen_by_auto_and_reduces_dk_over_many_blocks_on_gpu():
    """A million neurons: thousands of blocks add their share of dL/dk atomically."""
    assert registry.resolve_backend("auto", torch.ones(2, 3, device="cuda"))[0] == "cupy"
    config = ("plif", True, None, False, "atan")
    cfg, k = make_config(*config), decay("plif")
    case = [t.cuda() for t in random_case(cfg, k, torch.float32, seed=0, neurons=1_000_000)]
    got, expected = run_neuron("cupy", config, *case), run_neuron("torch", config, *case)
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[2], expected[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[4], expected[4], rtol=1e-4, atol=1e-3)


@pytest.mark.cuda
@needs_gpu
def test_cupy_runs_on_the_current_stream_and_compiles_once_on_gpu():
    x = torch.randn(8, 4096, device="cuda") + 0.5
    expected = multistep_lif(x, backend="torch")
    multistep_lif(x, backend="cupy")
    compiled = cupy_backend._module.cache_info().currsize
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        spikes = multistep_lif(x * 1.0, backend="cupy")  # x * 1.0 is queued on `stream` too
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(spikes, expected)
    assert cupy_backend._module.cache_info().currsize == compiled
