"""Multi-step spiking neuron layers: ``[T, ...]`` membrane input in, ``[T, ...]`` spikes out.

Each layer is stateless across calls (the membrane starts at rest at every forward pass), so
models need no ``reset_net`` and work with ``torch.compile``, DDP and gradient checkpointing.
For streaming, pass the previous chunk's final membrane as ``v_init`` and ask for
``return_state=True``.

Every binary spikezoo neuron is a :class:`MultiStepNeuron`, and every neuron (the integer
:class:`~spikezoo.neurons.IntegerNeuron` too) a :class:`~spikezoo.neurons.SpikingNeuron`, so
analysis tools find them all with ``isinstance(m, SpikingNeuron)`` and hook their outputs.
"""

from __future__ import annotations

import math

import torch
from timm.layers import register_notrace_module
from torch import Tensor, nn

from spikezoo import _checks
from spikezoo.neurons import functional as F
from spikezoo.neurons.backends.native import Normalisation
from spikezoo.neurons.base import SpikingNeuron
from spikezoo.neurons.surrogate import get_surrogate

__all__ = ["MultiStepIF", "MultiStepLIF", "MultiStepNeuron", "MultiStepPLIF"]


@register_notrace_module  # torch.fx keeps neurons (and subclasses) whole: their loops branch
class MultiStepNeuron(SpikingNeuron):
    """Base class of spikezoo's neurons; subclasses define the leak through :meth:`decay`.

    Args:
        v_threshold: firing threshold; a neuron fires when ``h >= v_threshold``.
        v_reset: membrane after a spike (hard reset); ``None`` subtracts the threshold instead
            (soft reset).
        surrogate: name of the surrogate gradient (``"sigmoid"``, ``"atan"``, or registered).
        alpha: surrogate sharpness; ``None`` takes the surrogate's default (4 or 2).
        detach_reset: stop the gradient through the reset (the papers' choice).
        backend: ``"auto"``, ``"torch"``, ``"native"``, ``"inductor"``, ``"cupy"`` or another
            registered backend; see :mod:`spikezoo.neurons.backends`.

    Arguments that would run but give garbage (``alpha <= 0``, ``v_threshold <= v_reset``, a
    non-finite number, ...) raise ``ValueError`` naming the argument; see
    :func:`spikezoo.neurons.functional.neuron_config`.
    """

    decay_input: bool = True

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        surrogate: str = "sigmoid",
        alpha: float | None = None,
        detach_reset: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        F.neuron_config(
            leaky=True,
            decay_input=True,
            v_threshold=v_threshold,
            v_reset=v_reset,
            surrogate=surrogate,
            alpha=alpha,
            detach_reset=detach_reset,
        )
        F.validate_backend(backend)
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.surrogate = surrogate
        self.alpha = alpha
        self.detach_reset = detach_reset
        self.backend = backend

    def decay(self) -> Tensor | float | None:
        """The per-step leak ``k`` (``1/tau`` or ``sigmoid(w)``); ``None`` for no leak."""
        return None

    def forward(
        self, x: Tensor, v_init: Tensor | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x [T, ...]`` -> spikes ``[T, ...]`` (and the final membrane ``[...]`` if asked)."""
        return F.multistep_neuron(
            x,
            decay=self.decay(),
            v_init=v_init,
            return_state=return_state,
            backend=self.backend,
            **self._settings(),
        )

    def reads_normalisation(self, x: Tensor) -> bool:
        """Whether this neuron can read ``x [T, B, C, ...]`` through a BatchNorm's per-channel
        map in one pass (:func:`~spikezoo.neurons.functional.reads_normalisation`), as
        :func:`spikezoo.layers.batch_norm_fire` asks it to."""
        return F.reads_normalisation(
            x, decay=self.decay(), backend=self.backend, **self._settings()
        )

    def forward_normalised(self, x: Tensor, normalisation: Normalisation) -> Tensor | None:
        """``self(bn(x))`` in inference, for the BatchNorm that ``normalisation`` describes,
        without writing ``bn(x)``; ``None`` (nothing run) unless :meth:`reads_normalisation`
        (:func:`~spikezoo.neurons.functional.normalised_multistep_neuron`). Forward hooks do
        not run."""
        return F.normalised_multistep_neuron(
            x, normalisation, decay=self.decay(), backend=self.backend, **self._settings()
        )

    def input_gradient(
        self, x: Tensor, grad_spikes: Tensor, normalisation: Normalisation | None = None
    ) -> tuple[Tensor, list[Tensor | None]]:
        """The gradients of ``self(x)`` for ``dL/dspikes = grad_spikes [T, ...]``, without
        running the forward pass (:func:`~spikezoo.neurons.functional.multistep_input_gradient`):
        ``dL/dx`` and, for each of :meth:`parameters`, its gradient (``None`` where it needs
        none). With ``normalisation`` (where :meth:`reads_normalisation`), of
        ``self(bn(x))``, and the first is ``dL/dbn(x)``. Forward hooks do not run."""
        with torch.enable_grad():
            decay = self.decay()
        grad_x, grad_k = F.multistep_input_gradient(
            x,
            grad_spikes,
            decay=decay,
            backend=self.backend,
            normalisation=normalisation,
            **self._settings(),
        )
        params = list(self.parameters())
        wanted = [p for p in params if p.requires_grad]
        if not (wanted and isinstance(decay, Tensor) and decay.requires_grad):
            return grad_x, [None] * len(params)
        grads = iter(torch.autograd.grad(decay, wanted, grad_k.to(decay.dtype), allow_unused=True))
        return grad_x, [next(grads) if p.requires_grad else None for p in params]

    def _settings(self) -> dict:
        """The dynamics' arguments of :func:`~spikezoo.neurons.functional.multistep_neuron`
        besides the decay."""
        return {
            "decay_input": self.decay_input,
            "v_threshold": self.v_threshold,
            "v_reset": self.v_reset,
            "surrogate": self.surrogate,
            "alpha": self.alpha,
            "detach_reset": self.detach_reset,
        }

    def extra_repr(self) -> str:
        alpha = get_surrogate(self.surrogate).default_alpha if self.alpha is None else self.alpha
        return (
            f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, "
            f"surrogate={self.surrogate}(alpha={alpha}), detach_reset={self.detach_reset}, "
            f"backend={self.backend}"
        )


class MultiStepIF(MultiStepNeuron):
    """Integrate-and-fire without leak: ``h[t] = v[t-1] + x[t]`` (spikingjelly ``IFNode``)."""


class MultiStepLIF(MultiStepNeuron):
    """Leaky integrate-and-fire (spikingjelly ``LIFNode`` with ``step_mode="m"``).

    ``h[t] = v[t-1] + (x[t] - (v[t-1] - v_reset)) / tau`` with ``decay_input=True``, else
    ``h[t] = v[t-1] - (v[t-1] - v_reset) / tau + x[t]``.

    Example:
        >>> import torch
        >>> lif = MultiStepLIF(tau=2.0, surrogate="atan")
        >>> lif(torch.full((3, 1), 1.5)).flatten().tolist()  # h = 0.75, 1.125 -> fires, 0.75
        [0.0, 1.0, 0.0]
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        surrogate: str = "sigmoid",
        alpha: float | None = None,
        detach_reset: bool = True,
        backend: str = "auto",
    ) -> None:
        _checks.time_constant("tau", tau)
        _checks.boolean("decay_input", decay_input)
        super().__init__(v_threshold, v_reset, surrogate, alpha, detach_reset, backend)
        self.tau = float(tau)
        self.decay_input = decay_input

    def decay(self) -> float:
        return 1.0 / self.tau

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class MultiStepPLIF(MultiStepNeuron):
    """Parametric LIF: the decay ``sigmoid(w)`` is learned (one scalar ``w`` per layer).

    ``w`` starts at ``-ln(init_tau - 1)`` so that ``1 / sigmoid(w) = init_tau``
    (spikingjelly ``ParametricLIFNode``; Fang et al., ICCV 2021). Optimisers usually exclude
    ``w`` from weight decay; the models list it in ``no_weight_decay()``.
    """

    def __init__(
        self,
        init_tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        decay_input: bool = True,
        surrogate: str = "sigmoid",
        alpha: float | None = None,
        detach_reset: bool = True,
        backend: str = "auto",
    ) -> None:
        _checks.time_constant("init_tau", init_tau)
        _checks.boolean("decay_input", decay_input)
        super().__init__(v_threshold, v_reset, surrogate, alpha, detach_reset, backend)
        self.decay_input = decay_input
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def decay(self) -> Tensor:
        return torch.sigmoid(self.w)

    def extra_repr(self) -> str:
        tau = 1.0 / torch.sigmoid(self.w.detach()).item()
        return f"tau={tau:.4g} (learned), decay_input={self.decay_input}, " + super().extra_repr()
