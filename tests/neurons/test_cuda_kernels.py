"""The CUDA neuron source, verified without a GPU.

- ``nvcc`` compiles every kernel the ``"cupy"`` backend instantiates, for the oldest and a
  recent architecture, and any warning fails the build;
- NVRTC (the compiler CuPy runs on the user's machine) compiles the source with the backend's
  own options and kernel names, where CuPy and NVRTC are installed;
- ``g++`` compiles the same ``__host__ __device__`` per-neuron functions the kernels call, and
  ctypes runs them over random inputs for every configuration and storage dtype, against the
  eager PyTorch loops: spikes, charged and final membranes, and the gradients for ``x``,
  ``v_init`` and the decay ``k``.

Inputs whose float64 trajectory comes within ``MARGIN`` of the threshold are dropped, so no
spike depends on the last bit of a float32 sum; values are compared with tolerances.
"""

from __future__ import annotations

import itertools
import shutil

import pytest
import torch

from spikezoo.neurons.backends import cupy as cupy_backend
from spikezoo.neurons.dynamics import NeuronConfig, backward_sequence, forward_sequence
from tests.cuda_cases import (
    CONFIG_NAMES,
    CONFIGS,
    DTYPES,
    STORAGE_CODE,
    V_RESET,
    V_THRESHOLD,
    away_from_threshold,
    build,
    decay,
    make_config,
    random_case,
)

# ---------------------------------------------------------------- the source compiles


def _all_kernel_names() -> list[str]:
    configs = itertools.product(
        [True, False], [True, False], [None, V_RESET], [True, False], ["sigmoid", "atan"]
    )
    names: set[str] = set()
    for leaky, decay_input, v_reset, detach_reset, surrogate in configs:
        cfg = NeuronConfig(leaky, decay_input, V_THRESHOLD, v_reset, surrogate, 1.0, detach_reset)
        names.update(cupy_backend.kernel_names(cfg).values())
    return sorted(names)


def test_every_configuration_has_its_own_kernels():
    names = _all_kernel_names()
    # IF ignores decay_input: 3 dynamics x 2 resets x 2 detach x 2 surrogates = 24 configurations,
    # each with 3 forward, 3 backward, 3 backward-from-input (one per dtype) and one dL/dk kernel.
    assert len(names) == 24 * 10
    assert all(name.startswith("spikezoo::") for name in names)


@pytest.mark.slow  # a minute per architecture
@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
def test_nvcc_compiles_every_kernel_without_warnings(arch, tmp_path):
    """sm_75 is the oldest architecture CUDA 13 compiles for; sm_90 is Hopper."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc (the CUDA toolkit) is not installed")
    unit = tmp_path / "instantiate.cu"
    addresses = ",\n".join(f"  reinterpret_cast<void*>(&{name})" for name in _all_kernel_names())
    unit.write_text(f'#include "neurons.cu"\n\nvoid* kernels[] = {{\n{addresses}\n}};\n')
    args = ["-std=c++17", "-fmad=false", f"-arch={arch}", "--Werror", "all-warnings",
            "-Xcompiler", "-Wall,-Wextra,-Werror", "-I", str(cupy_backend.SOURCE.parent),
            "-c", str(unit)]  # fmt: skip
    assert build(nvcc, args, [unit, cupy_backend.SOURCE], ".o").stat().st_size > 0


# One configuration per architecture: nvcc above builds them all.
@pytest.mark.parametrize(
    ("arch", "config"),
    [(75, ("lif", False, V_RESET, True, "sigmoid")), (90, ("plif", True, None, False, "atan"))],
)
def test_nvrtc_compiles_the_kernels_the_backend_loads(arch, config):
    """NVRTC, as CuPy calls it on a user's machine, with the backend's options and names."""
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="CuPy is not installed")
    try:
        nvrtc.getVersion()
    except Exception as error:
        pytest.skip(f"CuPy finds no NVRTC library: {error}")
    names = list(cupy_backend.kernel_names(make_config(*config)).values())
    program = nvrtc.createProgram(cupy_backend.SOURCE.read_text(), "neurons.cu", [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(program, name)
        # CuPy adds the execution-space option and the architecture of the device.
        options = [*cupy_backend.NVRTC_OPTIONS, "--device-as-default-execution-space"]
        try:
            nvrtc.compileProgram(program, [*options, f"-arch=sm_{arch}"])
        except nvrtc.NVRTCError:
            pytest.fail(nvrtc.getProgramLog(program))
        assert nvrtc.getProgramLog(program).strip() == ""  # not even a warning
        lowered = [nvrtc.getLoweredName(program, name) for name in names]
        assert len(set(lowered)) == len(names)
        assert all(name.startswith("_ZN8spikezoo") for name in lowered)
        assert len(nvrtc.getCUBIN(program)) > 0
    finally:
        nvrtc.destroyProgram(program)


# ---------------------------------------------------------------- host build against eager


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _flags(cfg: NeuronConfig) -> list[int]:
    surrogate = cupy_backend.SURROGATES[cfg.surrogate]
    return [cfg.leaky, cfg.decay_input, cfg.v_reset is None, cfg.detach_reset, surrogate]


def host_forward(lib, x, v_init, k, cfg):
    """The host build's forward: spikes (dtype of x), charged ``[T, N]`` and final ``v [N]``."""
    steps, neurons = x.shape
    spikes = torch.empty_like(x)
    charged = torch.empty(x.shape)
    v_final = torch.empty(neurons)
    status = lib.spikezoo_forward(
        *_flags(cfg), STORAGE_CODE[x.dtype], steps, neurons, _ptr(x), _ptr(v_init),
        int(v_init.dim() > 0), float(k), cfg.v_threshold, cfg.v_reset or 0.0,
        _ptr(spikes), _ptr(charged), _ptr(v_final),
    )  # fmt: skip
    assert status == 0
    return spikes, charged, v_final


def host_backward(lib, grad_spikes, grad_v, saved, v_init, k, cfg, grad_k_needed, from_input=False):
    """The host build's backward from the charged membranes ``saved`` (or, ``from_input``, from
    the forward's input): ``dL/dx [T, N]``, ``dL/dv_init [N]`` and ``dL/dk``."""
    steps, neurons = saved.shape
    grad_x = torch.empty(saved.shape)
    grad_v_init = torch.empty(neurons)
    grad_k = torch.zeros(()) if grad_k_needed else None
    flags = _flags(cfg)
    run = lib.spikezoo_backward_from_input if from_input else lib.spikezoo_backward
    status = run(
        *flags, STORAGE_CODE[grad_spikes.dtype], steps, neurons, _ptr(grad_spikes),
        _ptr(grad_v), int(grad_v.dim() > 0), _ptr(saved), _ptr(v_init), int(v_init.dim() > 0),
        float(k), cfg.v_threshold, cfg.v_reset or 0.0, cfg.alpha,
        _ptr(grad_x), _ptr(grad_v_init), _ptr(grad_k),
    )  # fmt: skip
    assert status == 0
    if grad_k is not None:
        assert lib.spikezoo_finish_grad_k(*flags, float(k), _ptr(grad_k)) == 0
    return grad_x, grad_v_init, grad_k


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(CONFIG_NAMES, CONFIGS)
def test_host_build_matches_eager_loops(
    host, kind, decay_input, v_reset, detach_reset, surrogate, dtype
):
    config = (kind, decay_input, v_reset, detach_reset, surrogate)
    cfg, k = make_config(*config), decay(kind)
    seed = len(CONFIGS) * DTYPES.index(dtype) + CONFIGS.index(config)
    x, v_init, grad_spikes, grad_v = random_case(cfg, k, dtype, seed)
    grad_k_needed = kind == "plif"

    spikes, charged, v_final = host_forward(host, x, v_init, k, cfg)
    ref_spikes, ref_charged, ref_v_final = forward_sequence(x, v_init, k, cfg, True)
    assert spikes.dtype == ref_spikes.dtype == dtype
    assert torch.equal(spikes, ref_spikes)
    assert 0.05 < spikes.float().mean() < 0.95
    torch.testing.assert_close(charged, ref_charged, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v_final, ref_v_final, rtol=1e-6, atol=1e-6)

    grads = host_backward(host, grad_spikes, grad_v, charged, v_init, k, cfg, grad_k_needed)
    ref_grads = backward_sequence(grad_spikes, grad_v, ref_charged, v_init, k, cfg, grad_k_needed)
    for name, got, expected in zip(("x", "v_init"), grads, ref_grads, strict=False):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"dL/d{name}")
    if grad_k_needed:
        assert ref_grads[2].abs() > 1
        torch.testing.assert_close(grads[2], ref_grads[2], rtol=1e-4, atol=1e-4, msg="dL/dk")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(CONFIG_NAMES, CONFIGS)
def test_host_build_backward_from_input_equals_backward_from_the_membranes(
    host, kind, decay_input, v_reset, detach_reset, surrogate, dtype
):
    """Recharging the membranes from ``x`` (in the thread's own array up to 16 steps, in the
    gradient's buffer beyond) gives the forward's membranes and so the same gradients, bit for
    bit."""
    config = (kind, decay_input, v_reset, detach_reset, surrogate)
    cfg, k = make_config(*config), decay(kind)
    seed = len(CONFIGS) * DTYPES.index(dtype) + CONFIGS.index(config)
    for steps in (1, 16, 17, 40):
        x, v_init, grad_spikes, grad_v = random_case(cfg, k, dtype, seed, steps, neurons=300)
        _, charged, _ = host_forward(host, x, v_init, k, cfg)
        expected = host_backward(host, grad_spikes, grad_v, charged, v_init, k, cfg, True)
        got = host_backward(host, grad_spikes, grad_v, x, v_init, k, cfg, True, from_input=True)
        for name, a, b in zip(("x", "v_init", "k"), got, expected, strict=True):
            assert torch.equal(a, b), f"dL/d{name}, T={steps}"


@pytest.mark.parametrize("v_reset", [0.0, None])
def test_host_build_shared_initial_membrane_and_gradient(host, v_reset):
    """A scalar ``v_init`` and ``dL/dv[T-1]`` (stride 0) serve every neuron."""
    cfg = NeuronConfig(True, True, V_THRESHOLD, v_reset, "sigmoid", 4.0, False)
    x = torch.randn(5, 2000) + 0.3
    v_init, k = torch.tensor(0.1), torch.tensor(0.4)
    x = x[:, away_from_threshold(x, v_init, k, cfg)].contiguous()
    grad_spikes, grad_v = torch.randn(x.shape), torch.tensor(0.7)
    spikes, charged, v_final = host_forward(host, x, v_init, k, cfg)
    ref_spikes, ref_charged, ref_v_final = forward_sequence(x, v_init, k, cfg, True)
    assert torch.equal(spikes, ref_spikes)
    torch.testing.assert_close(v_final, ref_v_final, rtol=1e-6, atol=1e-6)
    grads = host_backward(host, grad_spikes, grad_v, charged, v_init, k, cfg, True)
    ref_grads = backward_sequence(grad_spikes, grad_v, ref_charged, v_init, k, cfg, True)
    for got, expected in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_host_build_gradient_of_decay_at_zero_is_zero(host):
    """PLIF with ``k = sigmoid(w)`` underflowed to 0: dL/dk is 0, as in the eager loops."""
    cfg = NeuronConfig(True, True, V_THRESHOLD, 0.0, "atan", 2.0, True)
    x, v_init, k = torch.randn(4, 100), torch.zeros(100), torch.tensor(0.0)
    _, charged, _ = host_forward(host, x, v_init, k, cfg)
    grads = host_backward(
        host, torch.randn(4, 100), torch.zeros(100), charged, v_init, k, cfg, True
    )
    assert grads[2].item() == 0.0


# ---------------------------------------------------------------- float16 / bfloat16 conversions


@pytest.mark.parametrize(("dtype", "code"), [(torch.float16, 1), (torch.bfloat16, 2)])
def test_host_build_loads_every_16_bit_pattern_like_torch(host, dtype, code):
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int16)
    got = torch.empty(bits.shape)
    host.spikezoo_to_float(code, _ptr(bits), _ptr(got), bits.numel())
    expected = bits.view(dtype).float()
    assert torch.equal(got.isnan(), expected.isnan())
    finite = ~expected.isnan()
    assert torch.equal(got[finite].view(torch.int32), expected[finite].view(torch.int32))


@pytest.mark.parametrize(("dtype", "code"), [(torch.float16, 1), (torch.bfloat16, 2)])
def test_host_build_rounds_float32_like_torch(host, dtype, code):
    """Round to nearest even, overflow to infinity, subnormals: every float32 class."""
    gen = torch.Generator().manual_seed(code)
    random_bits = torch.randint(-(2**31), 2**31, (1 << 20,), generator=gen, dtype=torch.int64)
    finfo = torch.finfo(dtype)
    edges = torch.tensor(
        [0.0, -0.0, 1.0, float("inf"), -float("inf"), float("nan"), finfo.max, finfo.tiny,
         finfo.tiny / 3, finfo.max * 1.001, 65519.99, 65520.0, 2.0**-24, 2.0**-25, 3 * 2.0**-26,
         2.0**-133, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8]
    )  # fmt: skip
    values = torch.cat([random_bits.to(torch.int32).view(torch.float32), edges])
    small = torch.randn(1 << 16, generator=gen) * 2.0 ** torch.randint(
        -30, 20, (1 << 16,), generator=gen
    )
    values = torch.cat([values, small])
    got = torch.empty(values.shape, dtype=torch.int16)
    host.spikezoo_from_float(code, _ptr(values), _ptr(got), values.numel())
    expected = values.to(dtype)
    nan = expected.isnan()
    assert torch.equal(got.view(dtype).isnan(), nan)
    assert torch.equal(got[~nan], expected.view(torch.int16)[~nan])


@pytest.mark.parametrize(CONFIG_NAMES, [c for c in CONFIGS if c[3] and c[4] == "sigmoid"])
def test_host_build_nan_membrane_gives_nan_spikes_like_eager(
    host, kind, decay_input, v_reset, detach_reset, surrogate
):
    """A NaN input makes that neuron's membrane, spikes and gradients NaN from then on, and
    leaves the other neurons alone, as in the eager loops."""
    cfg, k = make_config(kind, decay_input, v_reset, detach_reset, surrogate), decay(kind)
    x, v_init = torch.full((4, 3), 1.0), torch.zeros(3)
    x[1, 0] = float("nan")
    spikes, charged, v_final = host_forward(host, x, v_init, k, cfg)
    expected = forward_sequence(x, v_init, k, cfg, True)
    assert spikes[:1, 0].isfinite().all() and spikes[1:, 0].isnan().all()
    for got, ref in zip((spikes, charged, v_final), expected, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)
    grad_k_needed = kind == "plif"
    args = (torch.ones(4, 3), torch.ones(3), charged, v_init, k, cfg, grad_k_needed)
    grads, ref_grads = host_backward(host, *args), backward_sequence(*args)
    for got, ref in zip(grads[:2], ref_grads[:2], strict=True):
        assert torch.equal(got.isnan(), ref.isnan()) and got[..., 1:].isfinite().all()
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert grads[0][:2, 0].isnan().all()
    if grad_k_needed:
        assert grads[2].isnan() and ref_grads[2].isnan()
