"""Neuron configurations and inputs shared by the CUDA kernel tests (host build and GPU).

Every configuration the CUDA kernels implement: LIF, PLIF (decay gradient needed) and IF; both
leaky forms; soft reset and a hard reset to a nonzero value; ``detach_reset`` on and off; both
surrogates, with non-default ``alpha``. Random inputs are kept only for neurons whose float64
trajectory stays ``MARGIN`` away from the threshold, so that no spike depends on the last bit
of a float32 sum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikezoo.neurons.dynamics import NeuronConfig, forward_sequence

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
