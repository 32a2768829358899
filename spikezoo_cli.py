"""The ``spikezoo`` console script, outside the ``spikezoo`` package so that it starts fast.

``import spikezoo`` imports torch and registers the models with timm, and Python imports a
package before any module inside it. This module imports neither: it knows the commands by
name and help line (:data:`COMMANDS`), answers ``spikezoo``, ``spikezoo --help`` and
``spikezoo --version`` by itself, and hands every command to :func:`spikezoo.cli.main`, which
parses the command's arguments and runs it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import NoReturn

__all__ = ["COMMANDS", "DISTRIBUTION", "build_parser", "main", "shadowing_folder"]

#: The distribution that installs the command (its version is ``spikezoo --version``).
DISTRIBUTION = "spikezoo-vit"

#: Command name -> (module that implements it, its one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("spikezoo.cli.listing", "list the registered models (or their pretrained tags)"),
    "demo": (
        "spikezoo.cli.demo",
        "classify the built-in input and report each spiking layer's firing rate",
    ),
    "convert": (
        "spikezoo.cli.convert",
        "convert an authors' or spikezoo checkpoint into a timm model directory",
    ),
    "push": ("spikezoo.cli.push", "upload a converted model directory to the Hugging Face Hub"),
    "publish": (
        "spikezoo.cli.publish",
        "convert and push every checkpoint listed in a manifest (weights/manifest.toml)",
    ),
    "profile": (
        "spikezoo.cli.profile",
        "count the MACs, SOPs and energy of a model on an image, with firing rates and throughput",
    ),
    "train": (
        "spikezoo.cli.train",
        "train a model from a recipe (YAML) with key=value overrides; torchrun for many GPUs",
    ),
    "validate": (
        "spikezoo.cli.validate",
        "evaluate a training checkpoint on a recipe's evaluation set (loss, top-1, top-5)",
    ),
}

DESCRIPTION = "spikezoo: spiking vision transformers for PyTorch and timm."


def build_parser(
    version: str,
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
    with_arguments: bool = False,
) -> argparse.ArgumentParser:
    """The ``spikezoo`` parser: ``--version``, ``--debug`` and one subcommand per command.

    With ``with_arguments`` each subcommand gets its module's arguments and its own
    ``--help`` and ``--debug`` (this imports the command modules, and so ``spikezoo`` and
    torch); without, the subcommands only name themselves, and the parser stops at the
    command's name.
    """
    parser = parser_class(prog="spikezoo", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {version}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_path, help_line) in COMMANDS.items():
        if not with_arguments:
            commands.add_parser(name, help=help_line, add_help=False)
            continue
        command = commands.add_parser(name, help=help_line, description=help_line, parents=[debug])
        importlib.import_module(module_path).add_arguments(command)
    return parser


def shadowing_folder() -> str | None:
    """Why ``import spikezoo`` would not give the installed package, or ``None`` if it would.

    A folder named ``spikezoo`` without ``__init__.py`` that comes first on ``sys.path`` (the
    clone's root, when Python starts in the folder that holds the clone and spikezoo is
    installed in editable mode) is imported as an empty namespace package: no model is
    registered with timm, and ``timm.create_model`` says ``Unknown model``.
    """
    spec = importlib.util.find_spec("spikezoo")
    if spec is None or spec.origin is not None or not spec.submodule_search_locations:
        return None
    folders = ", ".join(spec.submodule_search_locations)
    return (
        f"'import spikezoo' finds the folder {folders}, which has no __init__.py, instead of "
        "the installed package (Python looks in the current directory first and imports such "
        "a folder as an empty namespace package, so no model would be registered with timm): "
        "start Python in another directory, e.g. inside the clone, or clone the repository "
        "into a folder with another name ('git clone URL spikezoo-vit')"
    )


class _HandOver(Exception):
    """The overview parser met something only the full parser can answer (or word)."""


class _OverviewParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _HandOver(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spikezoo`` command line on ``argv`` (default ``sys.argv[1:]``); the exit code.

    ``spikezoo``, ``--help`` and ``--version`` are answered here; everything else (a command,
    or arguments the overview cannot place) goes to :func:`spikezoo.cli.main`.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    shadowed = shadowing_folder()
    if shadowed is not None:
        print(f"spikezoo: error: {shadowed}", file=sys.stderr)
        return 1
    overview = build_parser(metadata.version(DISTRIBUTION), _OverviewParser)
    try:
        args, unplaced = overview.parse_known_args(argv)
    except _HandOver:
        args, unplaced = None, argv
    if args is not None and args.command is None and not unplaced:
        overview.print_help()
        return 0
    from spikezoo.cli import main as run_command

    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
