"""The model families: a family is one module plus one line in :data:`FAMILIES`.

Each family module declares itself in one ``FAMILY = ModelFamily(...)``
(:class:`~spikezoo.models.ModelFamily`); :func:`families` and :func:`family_of` hand those
declarations to the code that serves every family.

The registry is a tuple of module paths rather than a ``register_family(...)`` call inside each
family module, because:

- timm already knows a family by its module (``timm.list_models(module=...)`` keys on the last
  component of the path), so the module path is the one name that everything else derives
  from: :data:`~spikezoo.models.MODEL_NAMES`, :func:`~spikezoo.models.guess_architecture`,
  ``spikezoo list``, model cards and the tests' parametrisation;
- importing the families is the registry's own job (:func:`family_modules`), so a family cannot
  be imported but left unregistered, or registered but never imported;
- the list is a constant: tests parametrise over it when they are collected, and a reader sees
  every family in one place.

What a family module defines is described in the "Adding a model family" section of the models
guide (``docs/models.md``).
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from torch import nn

from spikezoo.models._family import ModelFamily

__all__ = [
    "FAMILIES",
    "families",
    "family_modules",
    "family_of",
    "model_names",
    "timm_module_name",
]

#: Import path of every model family module, in the order listings show their models.
FAMILIES: tuple[str, ...] = (
    "spikezoo.models.spike_driven_transformer",
    "spikezoo.models.spiking_resformer",
    "spikezoo.models.spike_driven_transformer_v2",
    "spikezoo.models.spike_driven_transformer_v3",
    "spikezoo.models.spikformer",
    "spikezoo.models.spikingformer",
)


def family_modules() -> list[ModuleType]:
    """Every registered family module, imported (which registers its entry points with timm)."""
    return [importlib.import_module(path) for path in FAMILIES]


def families() -> list[ModelFamily]:
    """The declaration (``FAMILY``) of every registered family, in :data:`FAMILIES` order."""
    return [_declaration(module) for module in family_modules()]


def timm_module_name(family: ModelFamily | ModuleType | str) -> str:
    """The name timm files a family's models under: the last component of its module path."""
    if isinstance(family, ModelFamily):
        path = family.module
    else:
        path = family if isinstance(family, str) else family.__name__
    return path.rsplit(".", 1)[-1]


def model_names() -> tuple[str, ...]:
    """The entry points of every registered family, family by family in :data:`FAMILIES` order."""
    import timm

    return tuple(
        name
        for family in family_modules()
        for name in timm.list_models(module=timm_module_name(family))
    )


def family_of(model: nn.Module | type[nn.Module]) -> ModelFamily:
    """The declaration of ``model``'s family: the ``FAMILY`` of the module that defines its
    class (or the nearest base class defined in a family module).

    Raises ``LookupError`` for a model of no family.
    """
    model_cls = model if isinstance(model, type) else type(model)
    for cls in model_cls.__mro__:
        declaration = getattr(sys.modules.get(cls.__module__), "FAMILY", None)
        if isinstance(declaration, ModelFamily):
            return declaration
    raise LookupError(
        f"{model_cls.__name__} belongs to no spikezoo model family: expected a subclass of a "
        "model class whose module declares FAMILY = ModelFamily(...)"
    )


def _declaration(module: ModuleType) -> ModelFamily:
    declaration = getattr(module, "FAMILY", None)
    if not isinstance(declaration, ModelFamily):
        raise TypeError(
            f"the family module {module.__name__} must declare FAMILY = ModelFamily(...), "
            f"got {type(declaration).__name__}"
        )
    return declaration
