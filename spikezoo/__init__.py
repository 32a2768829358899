"""spikezoo: spiking vision transformers for PyTorch and timm.

``import spikezoo`` registers the models with timm, so ``timm.create_model("sdt_8_768")`` works.
"""

import importlib
import sys
from pathlib import Path
from types import ModuleType

from spikezoo._version import __version__

__all__ = ["__version__", "layers", "models", "neurons"]


def _starting_the_command_line() -> bool:
    """Whether this import starts the ``spikezoo`` command (its script or ``python -m spikezoo``).

    The command imports torch only for a subcommand that needs it, so that ``spikezoo --help``
    and ``spikezoo --version`` answer at once; everywhere else the import is eager.
    """
    if not sys.argv:
        return False
    if Path(sys.argv[0]).stem == "spikezoo":  # the console script
        return True
    if sys.argv[0] != "-m":  # runpy imports the package before it sets sys.argv[0]
        return False
    options = sys.orig_argv[1:]
    for position, option in enumerate(options):
        if option.startswith("-m"):
            module = option[2:] or "".join(options[position + 1 : position + 2])
            return module.split(".")[0] == "spikezoo"
    return False


def __getattr__(name: str) -> ModuleType:
    """The subpackages, imported on first use when the command line started the import."""
    if name in ("layers", "models", "neurons"):
        return importlib.import_module(f"spikezoo.{name}")
    raise AttributeError(f"module 'spikezoo' has no attribute {name!r}")


if not _starting_the_command_line():
    from spikezoo import layers, models, neurons  # registers the models with timm
