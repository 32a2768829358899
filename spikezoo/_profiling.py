"""Ranges named under ``torch.profiler`` for work that is no PyTorch operator.

A C kernel called through ctypes, or NumPy packing the spikes saved for backward, runs inside
its Python caller as far as the profiler can see: a trace would count its time as the
caller's own. :class:`ProfiledCall` wraps such a function so that, while the profiler records,
each call is a range of its own; without a profiler a call costs one check more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, ParamSpec, TypeVar

__all__ = ["ProfiledCall"]

P = ParamSpec("P")
R = TypeVar("R")


class ProfiledCall(Generic[P, R]):
    """``function``, called as ``call(*args, **kwargs)``, a range named ``label`` under
    ``torch.profiler``."""

    def __init__(self, label: str, function: Callable[P, R]) -> None:
        import torch  # spikezoo.native builds and loads its kernels without torch

        self.label = label
        self.function = function
        self._profiling = torch.autograd._profiler_enabled
        self._range = torch.profiler.record_function

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if not self._profiling():
            return self.function(*args, **kwargs)
        with self._range(self.label):
            return self.function(*args, **kwargs)
