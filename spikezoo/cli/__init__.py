"""The ``spikezoo`` command line.

Each command is a module named in :data:`spikezoo_cli.COMMANDS` (with its one-line help) that
defines ``add_arguments(parser)`` and ``run(args) -> int``. The console script is
:func:`spikezoo_cli.main`, outside this package so that ``spikezoo --help``, ``--version`` and
a plain ``spikezoo list`` answer without importing torch; it hands each other command to
:func:`main` here, showing on a terminal that torch is loading meanwhile. A command reports
a problem by raising :class:`~spikezoo.cli.errors.CommandError`: ``main`` prints it as one line
on stderr with its hint and returns a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

import spikezoo
import spikezoo_cli
from spikezoo import native, runtime
from spikezoo._optional import MissingDependencyError
from spikezoo.cli.errors import CommandError, UsageError
from spikezoo_cli import COMMANDS

__all__ = ["COMMANDS", "build_parser", "main"]

DEBUG_HINT = "run again with --debug for the traceback"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are :class:`UsageError`s (one line) instead of exits."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"see '{self.prog} --help'", prog=self.prog)


def build_parser() -> argparse.ArgumentParser:
    """The ``spikezoo`` parser with every command's arguments (imports the command modules)."""
    return spikezoo_cli.build_parser(spikezoo.__version__, _Parser, with_arguments=True)


class _DropCudaHomeNotice(logging.Filter):
    """Drops torch's ``No CUDA runtime is found, using CUDA_HOME=...`` on a machine without GPU."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


@contextmanager
def _without_cuda_home_notice() -> Iterator[None]:
    """While a command runs, torch.utils.cpp_extension keeps its CUDA_HOME notice to itself."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    notice_filter = _DropCudaHomeNotice()
    logger.addFilter(notice_filter)
    try:
        yield
    finally:
        logger.removeFilter(notice_filter)


class _Notes(logging.Handler):
    """Writes :mod:`spikezoo.native`'s build notes (:data:`~spikezoo.native.BUILD_NOTE`) and
    warnings as one line each on stderr, ``spikezoo demo: note: compiling neurons.c for this
    CPU, ...``: on a terminal over the progress line, which redraws itself below. Its other
    notes (no C compiler found: PyTorch's kernels run) stay in the log."""

    def __init__(self, prog: str) -> None:
        super().__init__(logging.INFO)
        self.prog = prog

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING and record.msg != native.BUILD_NOTE:
            return
        kind = "note" if record.levelno < logging.WARNING else "warning"
        message = _one_line(record.getMessage()).removeprefix("spikezoo: ")
        clear = spikezoo_cli.ERASE_LINE if sys.stderr.isatty() else ""
        print(f"{clear}{self.prog}: {kind}: {message}", file=sys.stderr, flush=True)


@contextmanager
def _notes_of_native_builds(prog: str) -> Iterator[None]:
    """While a command runs, spikezoo's C kernels say on stderr when they compile (seconds, on
    a machine's first run) and why one cannot be used; the logger is as it was afterwards."""
    logger = logging.getLogger(native.__name__)
    handler = _Notes(prog)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _keep_freed_memory_unless_told_not_to() -> None:
    """The command is the application: its process keeps freed memory (see
    :mod:`spikezoo.runtime`) unless ``SPIKEZOO_KEEP_FREED_MEMORY=0``."""
    value = os.environ.get(runtime.KEEP_FREED_MEMORY_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise CommandError(
            f"environment variable {runtime.KEEP_FREED_MEMORY_ENV}={value!r}: expected 1 (keep "
            "freed memory in this process, the default) or 0 (leave the C library's defaults)",
            hint="set it to 0 or 1, or unset it",
        )
    if value != "0":
        runtime.keep_freed_memory()


def _one_line(text: str, limit: int = 800) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _report(prog: str, message: str, hint: str | None) -> None:
    suffix = f" ({hint})" if hint else ""
    print(f"{prog}: error: {_one_line(message)}{suffix}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spikezoo`` command line on ``argv`` (default ``sys.argv[1:]``); the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        _report(error.prog, error.message, error.hint)
        return error.exit_code
    if args.command is None:
        build_parser().print_help()
        return 0
    prog = f"spikezoo {args.command}"
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        _keep_freed_memory_unless_told_not_to()
        with _without_cuda_home_notice(), _notes_of_native_builds(prog):
            return module.run(args)
    except CommandError as error:
        if args.debug:
            traceback.print_exc()
        _report(prog, error.message, error.hint)
        return error.exit_code
    except MissingDependencyError as error:
        if args.debug:
            raise
        _report(prog, str(error), None)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        _report(prog, f"{type(error).__name__}: {error}", DEBUG_HINT)
        return 1
