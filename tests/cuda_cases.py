"""Shared by the CUDA kernel tests: configurations, inputs, and the host build of the kernels.

Every configuration the CUDA kernels implement: LIF, PLIF (decay gradient needed) and IF; both
leaky forms; soft reset and a hard reset to a nonzero value; ``detach_reset`` on and off; both
surrogates, with non-default ``alpha``. Random inputs are kept only for neurons whose float64
trajectory stays ``MARGIN`` away from the threshold, so that no spike depends on the last bit
of a float32 sum.

:func:`load_host_library` compiles the per-neuron ``__host__ __device__`` functions of the CUDA
source with g++ (through ``tests/neurons/cuda_host_shim.cpp``) for ctypes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from spikezoo.neurons.backends import cupy as cupy_backend
from spikezoo.neurons.dynamics import NeuronConfig, forward_sequence

SHIM = Path(__file__).parent / "neurons" / "cuda_host_shim.cpp"
BUILD_CACHE = Path(tempfile.gettempdir()) / "spikezoo-cuda-tests"
#: torch dtype -> the ``dtype`` code of the host shim.
STORAGE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

V_THRESHOLD = 0.8
V_RESET = -0.4
MARGIN = 1e-3
SURROGATE_ALPHA = {"sigmoid": 3.0, "atan": 1.7}  # non-default; 1.7 is inexact in float32
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

#: (kind, decay_input, v_reset, detach_reset, surrogate); IF has no leaky form to choose.
CONFIGS = [
    (kind, decay_input, v_reset, detach_reset, surrogate)
    for kind in ("lif", "plif", "if")
    for decay_input in ((True, False) if kind != "if" else (True,))
    for v_reset in (None, V_RESET)
    for detach_reset in (True, False)
    for surrogate in ("sigmoid", "atan")
]
CONFIG_NAMES = ("kind", "decay_input", "v_reset", "detach_reset", "surrogate")


def make_config(kind, decay_input, v_reset, detach_reset, surrogate) -> NeuronConfig:
    """The :class:`NeuronConfig` of one entry of :data:`CONFIGS`."""
    return NeuronConfig(
        leaky=kind != "if",
        decay_input=decay_input,
        v_threshold=V_THRESHOLD,
        v_reset=v_reset,
        surrogate=surrogate,
        alpha=SURROGATE_ALPHA[surrogate],
        detach_reset=detach_reset,
    )


def decay(kind: str) -> Tensor:
    """``k`` of a neuron kind: PLIF ``sigmoid(w)``, LIF ``1 / tau``, and 0 for IF (unused)."""
    return {
        "plif": torch.sigmoid(torch.tensor(-0.6)),
        "lif": torch.tensor(1 / 1.7),
        "if": torch.tensor(0.0),
    }[kind]


def random_case(
    cfg: NeuronConfig, k: Tensor, dtype: torch.dtype, seed: int, steps: int = 6, neurons: int = 3000
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``x [T, N']`` (``dtype``), ``v_init [N']``, ``dL/dspikes [T, N']`` (``dtype``) and
    ``dL/dv [N']``: random, with the neurons near the threshold dropped (``N' <= N``)."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(steps, neurons, generator=gen) * 1.5 + 0.4).to(dtype).float()
    v_init = torch.randn(neurons, generator=gen) * 0.5
    keep = away_from_threshold(x, v_init, k, cfg)
    assert keep.float().mean() > 0.8
    x, v_init = x[:, keep].to(dtype).contiguous(), v_init[keep].contiguous()
    grad_spikes = torch.randn(x.shape, generator=gen).to(dtype)
    grad_v = torch.randn(x.shape[1], generator=gen)
    return x, v_init, grad_spikes, grad_v


def away_from_threshold(x: Tensor, v_init: Tensor, k: Tensor, cfg: NeuronConfig) -> Tensor:
    """``[N]`` bool: neurons whose float64 charged membranes all stay ``MARGIN`` away from the
    threshold."""
    _, charged, _ = forward_sequence(x.double(), v_init.double(), k.double(), cfg, True)
    return ((charged - cfg.v_threshold).abs() > MARGIN).all(0)


def build(compiler: str, args: list[str], inputs: list[Path], suffix: str) -> Path:
    """Compile once per content of ``inputs`` and ``args`` (cached in a temporary directory).

    Fails on any error or any diagnostic the compiler prints.
    """
    digest = hashlib.sha256(" ".join([compiler, *args]).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    product = BUILD_CACHE / f"{digest.hexdigest()[:24]}{suffix}"
    if not product.exists():
        BUILD_CACHE.mkdir(exist_ok=True)
        partial = product.with_suffix(f".{os.getpid()}.part")
        result = subprocess.run(
            [compiler, *args, "-o", str(partial)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0 and not result.stderr.strip(), (
            f"{compiler} failed or warned:\n{result.stdout}{result.stderr}"
        )
        partial.replace(product)
    return product


def load_host_library(gxx: str) -> ctypes.CDLL:
    """The host build of the CUDA source's per-neuron functions (see ``cuda_host_shim.cpp``)."""
    args = ["-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-fPIC",
            "-shared", "-I", str(cupy_backend.SOURCE.parent), str(SHIM)]  # fmt: skip
    lib = ctypes.CDLL(str(build(gxx, args, [SHIM, cupy_backend.SOURCE], ".so")))
    i, ll, f, d = ctypes.c_int, ctypes.c_longlong, ctypes.c_float, ctypes.c_double
    p = ctypes.c_void_p
    lib.spikezoo_forward.argtypes = [*[i] * 6, ll, ll, p, p, ll, f, f, f, p, p, p]
    lib.spikezoo_backward.argtypes = [*[i] * 6, ll, ll, p, p, ll, p, p, ll, f, f, f, d, p, p, p]
    lib.spikezoo_backward_from_input.argtypes = lib.spikezoo_backward.argtypes
    lib.spikezoo_finish_grad_k.argtypes = [*[i] * 5, f, p]
    lib.spikezoo_to_float.argtypes = [i, p, p, ll]
    lib.spikezoo_from_float.argtypes = [i, p, p, ll]
    return lib


def assert_model_cupy_matches_torch(model: torch.nn.Module, images: Tensor, monkeypatch) -> None:
    """Logits and every parameter gradient of ``model`` on ``images`` agree between every
    neuron of the model on ``"cupy"`` and on ``"torch"`` (chosen by ``SPIKEZOO_BACKEND``)."""
    results = {}
    for backend in ("torch", "cupy"):
        monkeypatch.setenv("SPIKEZOO_BACKEND", backend)
        model.zero_grad()
        logits = model(images)
        logits.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[backend] = logits.detach(), grads
    (logits, grads), (expected_logits, expected_grads) = results["cupy"], results["torch"]
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected_grads.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-3, atol=1e-5, msg=name)
