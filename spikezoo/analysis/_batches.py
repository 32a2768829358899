"""Feeding one batch or a whole data loader through a model, with a progress bar, and the
hooks the analysis context managers keep on the model meanwhile."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

_Session = TypeVar("_Session", bound="HookSession")


def refuse_compiled(model: nn.Module, tool: str) -> None:
    """Raise ``TypeError`` if ``model`` is ``torch.compile``'d: ``tool``, which hooks the layers
    of a model as it runs, needs the module it compiled (``model._orig_mod``)."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        raise TypeError(
            f"{tool} hooks the layers of a model as it runs, and got a torch.compile'd "
            f"{type(model._orig_mod).__name__}: hooks added to a compiled model's layers do not "
            "run, and a first call with hooks that read values makes torch.compile run the "
            "model eagerly from then on. Pass model._orig_mod, the module it compiled (for "
            "spikezoo.deploy.optimize's result, the optimised model with the same outputs)"
        )


class HookSession(ABC):
    """Base of the analysis context managers: hooks on ``model`` while open, samples counted.

    A subclass sets ``model`` and ``samples`` and defines :meth:`_register_hooks`; entering
    registers those hooks plus one that counts the samples reaching ``model``, leaving removes
    them all. Entering raises ``TypeError`` for a ``torch.compile``'d model (pass the module it
    compiled, ``model._orig_mod``).
    """

    model: nn.Module
    samples: int
    _handles: tuple[RemovableHandle, ...] = ()

    @abstractmethod
    def _register_hooks(self) -> list[RemovableHandle]:
        """Register the subclass's hooks on ``model``; return their handles."""

    def __enter__(self: _Session) -> _Session:
        refuse_compiled(self.model, type(self).__name__)
        self._handles = (
            *self._register_hooks(),
            self.model.register_forward_pre_hook(self._count_samples),
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = ()

    def _count_samples(self, module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor) and args[0].dim() > 0:
            self.samples += args[0].shape[0]

    def _run(
        self, data: Tensor | Iterable, progress: bool, max_batches: int | None, description: str
    ) -> None:
        """:func:`run_batches` with the hooks attached (already, or for this run only)."""
        if self._handles:
            run_batches(self.model, data, progress, max_batches, description)
        else:
            with self:
                run_batches(self.model, data, progress, max_batches, description)


def run_batches(
    model: nn.Module,
    data: Tensor | Iterable,
    progress: bool,
    max_batches: int | None,
    description: str,
) -> int:
    """Run ``model`` without gradients on ``data``; return the number of batches run.

    ``data`` is one input batch (a tensor) or an iterable of batches (e.g. a ``DataLoader``)
    whose items are tensors or ``(inputs, targets, ...)`` tuples; only the inputs are used, moved
    to the device of the model's first parameter.
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    batches = [data] if isinstance(data, Tensor) else data
    device = next((p.device for p in model.parameters()), None)
    total = None
    if max_batches is not None or hasattr(batches, "__len__"):
        total = min(x for x in (max_batches, _length(batches)) if x is not None)
    from tqdm.auto import tqdm

    count = 0
    with torch.no_grad():
        for batch in tqdm(batches, total=total, desc=description, disable=not progress):
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(inputs, Tensor):
                raise TypeError(
                    "data must yield tensors or (inputs, targets) tuples, got "
                    f"{type(inputs).__name__}"
                )
            model(inputs if device is None else inputs.to(device))
            count += 1
            if count == max_batches:
                break
    return count


def _length(batches: Iterable) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
