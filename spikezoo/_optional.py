"""Optional dependencies: a missing one is reported in one line that names the extra of
``spikezoo-vit`` that installs it.

``pip install spikezoo-vit`` installs what the models need. The extras of ``pyproject.toml``
add what some parts need: ``train`` (recipes, data sets, logs), ``analysis`` (tables and
plots), ``bench``. Every import of an optional dependency sits in
``with optional_dependency("what needs it"):``, which turns its ``ImportError`` into a
:class:`MissingDependencyError`. This module sits at the ground of the package: it imports
nothing from spikezoo.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DISTRIBUTION", "OPTIONAL", "MissingDependencyError", "optional_dependency"]

#: The distribution whose extras install the optional dependencies.
DISTRIBUTION = "spikezoo-vit"

#: Import name -> (the distribution that provides it, the extra of spikezoo-vit that has it).
OPTIONAL: dict[str, tuple[str, str]] = {
    "yaml": ("pyyaml", "train"),
    "pydantic": ("pydantic", "train"),
    "sklearn": ("scikit-learn", "train"),
    "spikingjelly": ("spikingjelly", "train"),
    "tensorboard": ("tensorboard", "train"),
    "matplotlib": ("matplotlib", "analysis"),
    "pandas": ("pandas", "analysis"),
    "snntorch": ("snntorch", "bench"),
}


class MissingDependencyError(ImportError):
    """An optional dependency that is not installed; the message says what needs it and the
    ``pip install`` command of the extra that installs it.

    ``distribution`` is the missing distribution, ``extra`` the extra of spikezoo-vit that has it.
    """

    def __init__(self, module: str, purpose: str, extra: str | None = None) -> None:
        self.distribution, default_extra = OPTIONAL[module]
        self.extra = extra or default_extra
        super().__init__(
            f"{purpose} needs {self.distribution}, which is not installed: "
            f'pip install "{DISTRIBUTION}[{self.extra}]"',
            name=module,
        )


@contextmanager
def optional_dependency(purpose: str, extra: str | None = None) -> Iterator[None]:
    """Imports in this block that fail for a missing optional dependency raise
    :class:`MissingDependencyError` naming ``purpose`` (e.g. ``"the digits data set"``) and
    ``extra`` (default: the extra :data:`OPTIONAL` names for that dependency).

    Any other ``ImportError`` (a module of spikezoo, a core dependency) goes on unchanged.
    """
    try:
        yield
    except MissingDependencyError:
        raise
    except ImportError as error:
        module = (error.name or "").partition(".")[0]
        if module not in OPTIONAL:
            raise
        raise MissingDependencyError(module, purpose, extra) from error
