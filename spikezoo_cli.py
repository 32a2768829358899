"""The ``spikezoo`` console script, outside the ``spikezoo`` package so that it starts fast.

``import spikezoo`` imports torch and registers the models with timm, and Python imports a
package before any module inside it. This module imports neither: it knows the commands by
name and help line (:data:`COMMANDS`), answers ``spikezoo``, ``spikezoo --help`` and
``spikezoo --version`` by itself, and hands every command to :func:`spikezoo.cli.main`, which
parses the command's arguments and runs it.

Two more things answer here, before torch is imported:

- ``spikezoo list`` and ``spikezoo list PATTERN`` read the model names from the family modules'
  source (:func:`model_names_from_source`) instead of importing them; ``--pretrained`` and a
  pattern that matches nothing go to the full command.
- :func:`progress` shows on a terminal what a command is doing while it does it, the import of
  torch and the models included.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib
import importlib.util
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import NoReturn, TextIO

__all__ = [
    "COMMANDS",
    "DISTRIBUTION",
    "ERASE_LINE",
    "build_parser",
    "main",
    "model_names_from_source",
    "progress",
    "shadowing_folder",
]

#: The distribution that installs the command (its version is ``spikezoo --version``).
DISTRIBUTION = "spikezoo-vit"

#: Back to the start of the terminal's line and erase it (where :func:`progress` draws).
ERASE_LINE = "\r\x1b[K"

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


@contextmanager
def progress(command: str, doing: str, stream: TextIO | None = None) -> Iterator[None]:
    """While the block runs, say on a terminal what ``command`` is ``doing`` and for how long.

    Where ``stream`` (default ``sys.stderr``) is a terminal, one line,
    ``spikezoo profile: building sdt_8_384 ... 4 s``, is redrawn every 0.2 s by a background
    thread and erased when the block ends, so that the terminal keeps only the command's
    output and errors. Anywhere else (a pipe, a file, a test's capture) nothing is written,
    as git and pip do: a log then holds the output, the notes and the errors, one line each.
    Nothing ever goes to stdout, so ``--format csv`` stays parseable.
    """
    stream = sys.stderr if stream is None else stream
    if not stream.isatty():
        yield
        return
    finished = threading.Event()
    start = time.monotonic()

    def redraw() -> None:
        frames = "|/-\\"
        tick = 0
        while True:
            elapsed = time.monotonic() - start
            stream.write(f"{ERASE_LINE}{command}: {doing} {frames[tick % 4]} {elapsed:.0f} s")
            stream.flush()
            tick += 1
            if finished.wait(0.2):
                break
        stream.write(ERASE_LINE)
        stream.flush()

    thread = threading.Thread(target=redraw, name="spikezoo-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        finished.set()
        thread.join()


def _natural_key(name: str) -> list[int | str]:
    """The sort key timm's ``list_models`` orders names by (runs of digits compare as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def _registered_functions(source: str) -> list[str]:
    """The top-level functions of ``source`` decorated with timm's ``register_model``."""
    names = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name == "register_model":
                names.append(node.name)
    return names


def model_names_from_source() -> list[str] | None:
    """The names ``spikezoo list`` prints, read from the source without importing spikezoo.

    The families are the module paths of ``FAMILIES`` in ``spikezoo/models/_registry.py``; a
    family's models are its functions decorated with ``@register_model``, in timm's order.
    ``None`` where a source file is missing (an install without ``.py`` files): the caller
    then imports the registry. ``tests/cli/test_startup.py`` checks that the result equals
    :data:`spikezoo.models.MODEL_NAMES`.
    """
    spec = importlib.util.find_spec("spikezoo")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    registry = package / "models" / "_registry.py"
    if not registry.is_file():
        return None
    families: tuple[str, ...] = ()
    for node in ast.parse(registry.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(getattr(target, "id", None) == "FAMILIES" for target in targets):
                families = ast.literal_eval(node.value)
    names = []
    for module_path in families:
        source = package.parent.joinpath(*module_path.split(".")).with_suffix(".py")
        if not source.is_file():
            return None
        names.extend(
            sorted(_registered_functions(source.read_text(encoding="utf-8")), key=_natural_key)
        )
    return names or None


def _list_from_source(unplaced: Sequence[str]) -> bool:
    """Answer ``spikezoo list [PATTERN]`` from the source; ``False``: the full command must."""
    if len(unplaced) > 1 or any(argument.startswith("-") for argument in unplaced):
        return False
    names = model_names_from_source()
    matches = fnmatch.filter(names or [], unplaced[0] if unplaced else "*")
    if not matches:
        return False
    print("\n".join(matches))
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spikezoo`` command line on ``argv`` (default ``sys.argv[1:]``); the exit code.

    ``spikezoo``, ``--help``, ``--version`` and a plain ``spikezoo list [PATTERN]`` are
    answered here; everything else (a command, or arguments the overview cannot place) goes
    to :func:`spikezoo.cli.main`.
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
    if args is not None and args.command == "list" and _list_from_source(unplaced):
        return 0
    command = "spikezoo" if args is None or args.command is None else f"spikezoo {args.command}"
    with progress(command, "loading torch, timm and the models"):
        from spikezoo.cli import main as run_command

    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
