"""What a command says while it works: progress on a terminal only, never on stdout."""

import csv
import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import torch

from spikezoo import runtime
from spikezoo.neurons.backends import native
from spikezoo_cli import progress

ROOT = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_and_erases_its_line_at_the_end():
    stream = Terminal()
    with progress("spikezoo profile", "building sdt_8_384", stream):
        pass
    written = stream.getvalue()
    assert written.startswith("\r\x1b[Kspikezoo profile: building sdt_8_384 | 0 s")
    assert written.endswith("\r\x1b[K")  # the terminal keeps only the command's output


def test_progress_erases_its_line_when_the_block_fails():
    stream = Terminal()
    try:
        with progress("spikezoo demo", "classifying the input", stream):
            raise KeyError("boom")
    except KeyError:
        pass
    assert stream.getvalue().endswith("\r\x1b[K")


def test_progress_writes_nothing_off_a_terminal():
    stream = io.StringIO()
    with progress("spikezoo profile", "building sdt_8_384", stream):
        pass
    assert stream.getvalue() == ""


def run_with_stderr_on_a_terminal(*argv: str) -> tuple[int, str, str]:
    """``python -m spikezoo_cli argv`` with stderr on a pseudo-terminal and stdout on a pipe."""
    leader, follower = pty.openpty()
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.pop("SPIKEZOO_BACKEND", None)
    environ.pop(runtime.KEEP_FREED_MEMORY_ENV, None)  # the command as users run it
    process = subprocess.Popen(
        [sys.executable, "-m", "spikezoo_cli", *argv],
        stdout=subprocess.PIPE,
        stderr=follower,
        cwd=ROOT,
        env=environ,
    )
    os.close(follower)
    terminal = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    os.close(leader)
    out = process.stdout.read().decode()
    return process.wait(), out, terminal.decode(errors="replace")


def test_profile_says_what_it_does_on_the_terminal_and_keeps_stdout_csv():
    code, out, terminal = run_with_stderr_on_a_terminal(
        "profile", "sdt_2_256_cifar", "--time-steps", "1", "--repeats", "1", "--format", "csv"
    )
    assert code == 0, terminal
    for step in (
        "spikezoo profile: loading torch, timm and the models",
        "spikezoo profile: building sdt_2_256_cifar",
        "spikezoo profile: calibrating BatchNorm on the image",
        "spikezoo profile: counting operations, timing 1 forward pass",
    ):
        assert step in terminal
    assert "torch.compile" not in terminal  # a few passes: no compile, so no compile note
    rows = list(csv.DictReader(io.StringIO(out)))
    summary = {row["metric"]: row["value"] for row in rows if row["section"] == "summary"}
    # the C loops, or eagerly where they cannot be built: nothing compiles for a few passes
    expected = "native" if native.unavailable_reason(torch.ones(1)) is None else "torch"
    assert summary["model"] == "sdt_2_256_cifar" and summary["neuron_backend"] == expected
    # the command's process kept freed memory, where the C library is glibc
    assert summary["freed_memory"] == ("kept" if runtime._glibc() is not None else "default")


def test_a_command_says_when_a_c_kernel_compiles_and_only_then(tmp_path, monkeypatch, capsys):
    """The first run on a machine compiles spikezoo's C kernels (seconds each): the command
    says so on stderr, once per library; a run that loads them says nothing."""
    from spikezoo import native as c_kernels
    from spikezoo.cli import main

    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "answer.c").write_text("int answer(void) { return 42; }\n")
    monkeypatch.setattr(c_kernels, "SOURCES", sources)
    monkeypatch.setenv("SPIKEZOO_CACHE", str(tmp_path / "cache"))
    answers = []

    def run(args):
        c_kernels.library.cache_clear()
        answers.append(c_kernels.library("answer").answer())
        return 0

    monkeypatch.setattr("spikezoo.cli.listing.run", run)
    try:
        assert main(["list"]) == 0
        first = capsys.readouterr()
        assert main(["list"]) == 0  # a later process: the build is in the cache
        later = capsys.readouterr()
    finally:
        c_kernels.library.cache_clear()
    assert answers == [42, 42] and first.out == later.out == ""
    assert first.err == (
        "spikezoo list: note: compiling answer.c for this CPU, once (a few seconds); later runs "
        f"load it from {tmp_path / 'cache' / 'native'}\n"
    )
    assert later.err == ""


def test_a_command_shows_c_kernel_warnings_and_leaves_the_logger_as_it_was(monkeypatch, capsys):
    import logging

    from spikezoo.cli import main

    logger = logging.getLogger("spikezoo.native")
    before = (logger.level, logger.propagate, list(logger.handlers))

    def run(args):
        logger.info("spikezoo: no C compiler found; PyTorch's kernel runs instead of %s", "x")
        logger.warning("spikezoo: cc could not compile x.c:\nx.c:1: error\nPyTorch's kernel runs")
        return 0

    monkeypatch.setattr("spikezoo.cli.listing.run", run)
    assert main(["list"]) == 0
    assert capsys.readouterr().err == (
        "spikezoo list: warning: cc could not compile x.c: x.c:1: error PyTorch's kernel runs\n"
    )
    assert (logger.level, logger.propagate, list(logger.handlers)) == before
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["list"]) == 0  # over the progress line, which redraws itself below
    assert terminal.getvalue().startswith("\r\x1b[Kspikezoo list: warning: cc could not")
