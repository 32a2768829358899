"""Helpers shared by the commands: model names, argument types, the neuron backend a command
runs, and the first-run note."""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import TYPE_CHECKING

from spikezoo.cli.errors import CommandError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "COMPILE_NOTE",
    "LIST_HINT",
    "TAGS_HINT",
    "choose_backend",
    "close_names",
    "did_you_mean",
    "note_compilation",
    "positive_int",
    "resolve_model_name",
    "spikezoo_names",
]

#: The hint that points to the list of models.
LIST_HINT = "'spikezoo list' shows the models"
#: The hint that points to the list of ``model.tag`` names.
TAGS_HINT = "'spikezoo list --pretrained' shows the weight tags"
#: What a command says on stderr before its neurons' kernels may compile.
COMPILE_NOTE = (
    "note: torch.compile compiles the neurons' kernels on first use; the first "
    "run on a machine takes longest (15-25 s on 2 CPU cores), later runs reuse the kernels"
)


def first_backend(model: nn.Module, backend: str) -> str:
    """The backend that a neuron of ``model`` set to ``backend`` runs first on the model's
    device and dtype: ``backend`` itself, or for ``"auto"`` the first it resolves to."""
    import torch

    from spikezoo.neurons.backends import resolve_backend

    if backend != "auto":
        return backend
    parameter = next(model.parameters(), None)
    like = torch.empty(0) if parameter is None else parameter.new_empty(0)
    return resolve_backend("auto", like)[0]


def note_compilation(command: str, model: nn.Module) -> None:
    """Print :data:`COMPILE_NOTE` on stderr where a neuron of ``model`` runs on ``"inductor"``
    (``torch.compile``), not where every neuron runs eagerly or on kernels already built."""
    from spikezoo.neurons import MultiStepNeuron

    chosen = {m.backend for m in model.modules() if isinstance(m, MultiStepNeuron)}
    if any(first_backend(model, backend) == "inductor" for backend in chosen):
        print(f"spikezoo {command}: {COMPILE_NOTE}", file=sys.stderr, flush=True)


def choose_backend(
    model: nn.Module, requested: str | None, forward_passes: int, device: torch.device
) -> str:
    """Give every neuron of ``model`` its backend and return the name of the one that runs
    (for ``"auto"``, what it resolves to first: :func:`first_backend`).

    ``requested`` (a command's ``--backend``) wins. Without it the work decides: a command of a
    few forward passes runs its neurons eagerly rather than wait for ``torch.compile``
    (:func:`spikezoo.neurons.model_backend.backend_for_work`). An unknown name is a
    CommandError.
    """
    from spikezoo.neurons import MultiStepNeuron, set_backend
    from spikezoo.neurons.backends import validate_backend
    from spikezoo.neurons.model_backend import backend_for_work

    backend = requested if requested is not None else backend_for_work(forward_passes, device)
    try:
        validate_backend(backend)
    except ValueError as error:
        raise CommandError(str(error)) from None
    # A model without neurons has no backend to set; the command's own check says what is wrong.
    if any(isinstance(module, MultiStepNeuron) for module in model.modules()):
        set_backend(model, backend)
    return first_backend(model, backend)


def spikezoo_names(pretrained: bool = False) -> list[str]:
    """The registered spikezoo models, or with ``pretrained`` their ``model.tag`` names."""
    import timm

    from spikezoo.models import MODEL_NAMES

    if not pretrained:
        return list(MODEL_NAMES)
    return [name for name in timm.list_pretrained() if name.split(".")[0] in MODEL_NAMES]


def close_names(name: str, candidates: list[str]) -> list[str]:
    """Up to three of ``candidates`` that look like ``name`` (difflib), best first."""
    return difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)


def did_you_mean(name: str, candidates: list[str], pointer: str = LIST_HINT) -> str:
    """A hint naming the candidates close to ``name``, then ``pointer`` (to ``spikezoo list``)."""
    close = close_names(name, candidates)
    return f"did you mean {', '.join(close)}? {pointer}" if close else pointer


def resolve_model_name(name: str) -> str:
    """``name`` if it is a registered spikezoo model or ``model.tag`` name, else a CommandError.

    The error names close spikezoo names and points to ``spikezoo list``.
    """
    import timm

    architecture, _, tag = name.partition(".")
    models = spikezoo_names()
    if architecture in models:
        tags = [t for t in spikezoo_names(pretrained=True) if t.split(".")[0] == architecture]
        if not tag or name in tags:
            return name
        raise CommandError(
            f"{architecture} has no weights tagged {tag!r}",
            hint=f"its tags: {', '.join(tags)}" if tags else TAGS_HINT,
        )
    if timm.is_model(architecture):
        raise CommandError(
            f"{name!r} is a timm model, not a spikezoo model", hint=did_you_mean(name, models)
        )
    if tag:
        hint = did_you_mean(name, spikezoo_names(pretrained=True), TAGS_HINT)
    else:
        hint = did_you_mean(name, models)
    raise CommandError(f"unknown model {name!r}", hint=hint)


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value
