"""The neuron dynamics as plain PyTorch: the configuration and the eager reference loops.

For ``t = 0 .. T-1``, with the membrane ``v`` starting at ``v_init``::

    h[t] = v[t-1] + (x[t] - (v[t-1] - v_reset)) * k     leaky, decay_input=True
    h[t] = v[t-1] - (v[t-1] - v_reset) * k + x[t]       leaky, decay_input=False
    h[t] = v[t-1] + x[t]                                integrate-and-fire (no leak)
    s[t] = 1 if h[t] >= v_threshold else 0              (NaN if h[t] is NaN)
    v[t] = v_reset if s[t] else h[t]                     hard reset
    v[t] = h[t] - s[t] * v_threshold                     soft reset (v_reset=None)

with ``k = 1 / tau`` (LIF) or ``k = sigmoid(w)`` (PLIF). Tensors are flattened to ``[T, N]``
(``N`` neurons); ``v_init`` is ``[N]`` or a scalar ``[]`` broadcast to every neuron.

:func:`forward_sequence` and :func:`backward_sequence` are the reference every backend
reproduces: a backend's ``forward`` and ``backward`` take the same arguments and return the
same results. A NaN membrane is not silenced: its spike is NaN (as ``relu(nan)`` is NaN), the
membrane stays NaN, and so do the gradients that flow through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spikezoo.neurons.surrogate import get_surrogate

__all__ = [
    "NeuronConfig",
    "backward_sequence",
    "backward_steps",
    "backward_steps_from_input",
    "charge",
    "charged_membranes",
    "finish_grad_k",
    "forward_sequence",
    "reset",
]


@dataclass(frozen=True)
class NeuronConfig:
    """The static part of the dynamics: everything except the decay ``k`` and the tensors.

    Attributes:
        leaky: whether the membrane leaks (LIF, PLIF) or not (IF).
        decay_input: leaky form: ``True`` scales the input by ``k`` too.
        v_threshold: a neuron fires when ``h >= v_threshold``.
        v_reset: membrane after a spike; ``None`` is the soft reset (subtract the threshold).
        surrogate: name of the surrogate gradient (see :mod:`spikezoo.neurons.surrogate`).
        alpha: the surrogate's sharpness.
        detach_reset: no gradient through the reset.
    """

    leaky: bool
    decay_input: bool
    v_threshold: float
    v_reset: float | None
    surrogate: str
    alpha: float
    detach_reset: bool

    @property
    def charge_reset(self) -> float:
        """The rest potential the leak pulls towards (0 under soft reset, as in spikingjelly)."""
        return 0.0 if self.v_reset is None else self.v_reset


def charge(x: Tensor, v: Tensor, k: Tensor, cfg: NeuronConfig) -> Tensor:
    """One step of charging: ``x [N]``, the membrane ``v`` before it -> ``h [N]``."""
    if not cfg.leaky:
        return v + x
    above_rest = v - cfg.charge_reset if cfg.charge_reset else v  # v - 0.0 is v, exactly
    if cfg.decay_input:
        return v + (x - above_rest) * k
    return v - above_rest * k + x


def reset(h: Tensor, fired: Tensor, cfg: NeuronConfig) -> Tensor:
    """The membrane after the spikes ``fired`` (bool) of the charged membrane ``h``."""
    if cfg.v_reset is None:
        return h - fired.to(h.dtype) * cfg.v_threshold
    return torch.where(fired, cfg.v_reset, h)


def forward_sequence(
    x: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    keep_charged: bool,
    final_needed: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Run the dynamics over ``x [T, N]`` starting from the membrane ``v_init`` (``[N]`` or ``[]``).

    ``k`` is the decay (a ``[]`` tensor in the compute dtype, that of ``v_init``). Returns the
    spikes ``[T, N]`` in the dtype of ``x``, the charged membranes ``h [T, N]`` that
    :func:`backward_sequence` needs (``None`` unless ``keep_charged``), and the final
    membrane ``v [N]`` (``None`` unless ``final_needed``: a compiled loop then writes no
    ``[N]`` tensor for it).
    """
    v = v_init
    spikes, charged = [], []
    # unbind, not x[t]: under torch.compile, inductor then fuses the layer before (a
    # BatchNorm's affine map) into the loop's kernel instead of writing its output first
    for x_t in x.unbind(0):
        h = charge(x_t.to(v.dtype), v, k, cfg)
        fired = h >= cfg.v_threshold
        # A NaN membrane spikes NaN (h != h only for NaN; unlike isnan, it vectorises in inductor).
        spikes.append(torch.where(h != h, h, fired).to(x.dtype))
        if keep_charged:
            charged.append(h)
        v = reset(h, fired, cfg)
    return (
        torch.stack(spikes),
        torch.stack(charged) if keep_charged else None,
        v if final_needed else None,
    )


def charged_membranes(
    x: Tensor, v_init: Tensor, k: Tensor, cfg: NeuronConfig
) -> tuple[list[Tensor], Tensor]:
    """The charged membranes ``h[t] [N]`` of :func:`forward_sequence`, by the same operations
    (so bit for bit the same), as a list, and the final membrane ``v [N]``."""
    v = v_init
    charged = []
    for x_t in x.unbind(0):
        h = charge(x_t.to(v.dtype), v, k, cfg)
        charged.append(h)
        v = reset(h, h >= cfg.v_threshold, cfg)
    return charged, v


def backward_steps(
    grad_spikes: Tensor,
    grad_v: Tensor,
    grad_k: Tensor,
    charged: Tensor | list[Tensor],
    v_before: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Back-propagate through the steps of ``charged [T, N]`` (or a list of T ``[N]``), last
    step first.

    ``grad_v`` is ``dL/dv`` after the last step, ``grad_k`` the running sum of ``dL/dk`` terms
    (for ``decay_input`` not yet divided by ``k``: :func:`backward_sequence` divides at the end),
    ``v_before`` the membrane before the first step. Returns ``dL/dx [T, N]``, ``dL/dv`` before
    the first step (``None`` unless ``grad_v_needed``: a compiled loop then writes no ``[N]``
    tensor for it) and the updated ``grad_k``. A sequence can be cut into consecutive chunks
    and run chunk by chunk, last chunk first.
    """
    surrogate = get_surrogate(cfg.surrogate)
    grad_x = []
    for t in range(len(charged) - 1, -1, -1):
        h = charged[t]
        u = h - cfg.v_threshold
        dspike = surrogate.grad(u, cfg.alpha)
        if cfg.v_reset is None:
            dv_dh = 1.0 if cfg.detach_reset else 1.0 - cfg.v_threshold * dspike
        else:
            dv_dh = (u < 0).to(h.dtype)
            if not cfg.detach_reset:
                dv_dh = dv_dh + (cfg.v_reset - h) * dspike
        grad_h = grad_spikes[t].to(h.dtype) * dspike + grad_v * dv_dh
        if not cfg.leaky:
            grad_x.append(grad_h)
            grad_v = grad_h
            continue
        if grad_k_needed:
            v_prev = v_before
            if t > 0:
                v_prev = reset(charged[t - 1], charged[t - 1] >= cfg.v_threshold, cfg)
            # decay_input: dh/dk = x - (v_prev - v_reset) = (h - v_prev) / k, divided at the end.
            dh_dk = h - v_prev if cfg.decay_input else cfg.charge_reset - v_prev
            grad_k = grad_k + (grad_h * dh_dk).sum()
        grad_x.append(grad_h * k if cfg.decay_input else grad_h)
        grad_v = grad_h * (1.0 - k)
    grad_x.reverse()
    return torch.stack(grad_x), grad_v if grad_v_needed else None, grad_k


def backward_steps_from_input(
    grad_spikes: Tensor,
    grad_v: Tensor,
    grad_k: Tensor,
    x: Tensor,
    v_before: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """:func:`backward_steps` with the charged membranes recomputed from the input ``x [T, N]``
    by :func:`charged_membranes`. A backend that compiles this into one kernel keeps them in
    registers (they are a list, not a stacked tensor, which a compiler would write out), so a
    training step never writes them to memory.
    """
    charged, _ = charged_membranes(x, v_before, k, cfg)
    return backward_steps(
        grad_spikes, grad_v, grad_k, charged, v_before, k, cfg, grad_k_needed, grad_v_needed
    )


def finish_grad_k(grad_k: Tensor, k: Tensor, cfg: NeuronConfig) -> Tensor:
    """``dL/dk`` from the sum :func:`backward_steps` accumulated."""
    if not cfg.decay_input:
        return grad_k
    # k underflows to 0 only for an extreme PLIF w, where dh/dk * k is 0 too.
    return torch.where(k > 0, grad_k / k, 0.0)


def backward_sequence(
    grad_spikes: Tensor,
    grad_v: Tensor,
    charged: Tensor,
    v_init: Tensor,
    k: Tensor,
    cfg: NeuronConfig,
    grad_k_needed: bool,
    grad_v_needed: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Back-propagation through time of :func:`forward_sequence`.

    ``grad_spikes [T, N]`` and ``grad_v`` (``[N]`` or ``[]``) are the gradients of the loss
    with respect to the spikes and the final membrane; ``charged [T, N]`` and ``v_init`` come
    from the forward pass. Returns ``dL/dx [T, N]``, ``dL/dv_init [N]`` (``None`` unless
    ``grad_v_needed``) and ``dL/dk`` (a ``[]`` tensor, zero unless ``grad_k_needed``).
    """
    grad_k = torch.zeros((), dtype=charged.dtype, device=charged.device)
    grad_x, grad_v, grad_k = backward_steps(
        grad_spikes, grad_v, grad_k, charged, v_init, k, cfg, grad_k_needed, grad_v_needed
    )
    if grad_k_needed and cfg.leaky:
        grad_k = finish_grad_k(grad_k, k, cfg)
    return grad_x, grad_v, grad_k
