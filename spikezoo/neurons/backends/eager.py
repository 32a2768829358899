"""Backend ``"torch"``: the eager reference loops of :mod:`spikezoo.neurons.dynamics`.

Runs on any device and dtype; one small kernel per operation and time step.
"""

from __future__ import annotations

from torch import Tensor

from spikezoo.neurons.dynamics import backward_sequence as backward
from spikezoo.neurons.dynamics import forward_sequence as forward

__all__ = ["backward", "forward", "unavailable_reason"]


def unavailable_reason(x: Tensor) -> str | None:
    """Always ``None``: eager PyTorch runs wherever ``x`` lives."""
    return None
