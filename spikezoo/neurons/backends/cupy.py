"""The ``"cupy"`` backend: fused CUDA kernels, compiled at run time by NVRTC through CuPy.

The kernels live in ``spikezoo/neurons/cuda/neurons.cu`` (shipped with the package). One launch
runs all T forward steps, one thread per neuron; one launch runs back-propagation through time
in reverse from the charged membranes; PLIF's decay gradient is reduced on the device.
"""

from __future__ import annotations

from pathlib import Path

import torch

from spikezoo.neurons.functional import NeuronConfig

SOURCE = Path(__file__).resolve().parent.parent / "cuda" / "neurons.cu"

#: Surrogate name -> the ``spikezoo::Surrogate`` value in the CUDA source.
SURROGATES = {"sigmoid": 0, "atan": 1}

#: torch dtype -> the C++ storage type of its elements in the CUDA source.
STORAGE_TYPES = {
    torch.float32: "float",
    torch.float16: "spikezoo::half_bits",
    torch.bfloat16: "spikezoo::bfloat16_bits",
}


def _template_arguments(cfg: NeuronConfig) -> str:
    """``Leaky, DecayInput, SoftReset, DetachReset, SurrogateKind`` of ``spikezoo::Neuron``."""
    flags = (cfg.leaky, cfg.decay_input or not cfg.leaky, cfg.v_reset is None, cfg.detach_reset)
    return ", ".join(
        [*("true" if flag else "false" for flag in flags), str(SURROGATES[cfg.surrogate])]
    )


def kernel_names(cfg: NeuronConfig) -> dict[tuple[str, torch.dtype | None], str]:
    """The C++ names of the kernels of one configuration, keyed by ``(role, dtype)``.

    ``("forward", dtype)``: the forward kernel for inputs of ``dtype``; ``("backward", dtype)``:
    the backward kernel for ``dL/dspikes`` of ``dtype``; ``("grad_k", None)``: the kernel that
    finishes ``dL/dk``. IF ignores ``decay_input``, so both values name the same kernels.
    """
    flags = _template_arguments(cfg)
    names: dict[tuple[str, torch.dtype | None], str] = {}
    for dtype, storage in STORAGE_TYPES.items():
        names["forward", dtype] = f"spikezoo::forward_kernel<{storage}, {flags}>"
        names["backward", dtype] = f"spikezoo::backward_kernel<{storage}, {flags}>"
    names["grad_k", None] = f"spikezoo::finish_grad_k_kernel<{flags}>"
    return names
