"""Back-propagation through time as one custom autograd function.

The forward loop keeps a single tensor per step, the charged membrane ``h[t]``, or, on a
backend with a ``backward_from_input`` (``"native"``, ``"inductor"``, ``"cupy"``), only the
input ``x`` it was given; the backward loop walks the steps in reverse and recomputes what it
needs from that, instead of keeping the autograd graph of the whole loop. Both loops run on a
backend of :mod:`spikezoo.neurons.backends`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spikezoo.neurons.backends import run_backward, run_backward_from_input, run_training_forward
from spikezoo.neurons.dynamics import NeuronConfig

__all__ = ["MultiStepDynamics"]


class MultiStepDynamics(torch.autograd.Function):
    """``apply(x [T, N], k [], v_init [N] or [], cfg, candidates, final_needed) -> (spikes [T, N],
    v_final [N])``.

    ``candidates`` are the names of the backends to try in order (see
    :func:`spikezoo.neurons.backends.resolve_backend`); the backward pass starts with the one
    that ran the forward pass. Gradients flow into ``x``, ``k`` (PLIF's decay) and ``v_init``.
    With ``final_needed=False``, ``v_final`` may be ``None`` (the backend then writes no
    ``[N]`` tensor for it).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        k: Tensor,
        v_init: Tensor,
        cfg: NeuronConfig,
        candidates: tuple[str, ...],
        final_needed: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Run the forward loop, keeping the charged membranes (or ``x``) for :meth:`backward`."""
        ctx.set_materialize_grads(False)
        backend, (spikes, charged, v_final) = run_training_forward(
            candidates, x, v_init, k, cfg, final_needed
        )
        ctx.cfg = cfg
        ctx.candidates = candidates[candidates.index(backend) :]
        ctx.from_input = charged is None
        ctx.save_for_backward(x if ctx.from_input else charged, v_init, k)
        return spikes, v_final

    @staticmethod
    def backward(ctx: Any, grad_spikes: Tensor | None, grad_v_final: Tensor | None) -> tuple:
        """Reverse-time loop: gradients for ``x``, ``k`` and ``v_init``."""
        saved, v_init, k = ctx.saved_tensors
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(saved)
        if grad_v_final is None:
            grad_v_final = torch.zeros((), dtype=v_init.dtype, device=saved.device)
        run = run_backward_from_input if ctx.from_input else run_backward
        grad_k_needed = ctx.needs_input_grad[1]
        _, (grad_x, grad_v_init, grad_k) = run(
            ctx.candidates,
            grad_spikes,
            grad_v_final.to(v_init.dtype),
            saved,
            v_init,
            k,
            ctx.cfg,
            grad_k_needed,
            ctx.needs_input_grad[2],
        )
        grad_v_init = grad_v_init if ctx.needs_input_grad[2] else None
        return grad_x, grad_k if grad_k_needed else None, grad_v_init, None, None, None
