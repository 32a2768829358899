"""Where and when a benchmark ran: date, machine, threads, versions, the load before and after."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["command_line", "environment", "finish", "load_text"]


def _load() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def cpu_name() -> str:
    """The CPU's model name and logical CPU count."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        module = sys.modules.get(package)
        return getattr(module, "__version__", None)


def environment(device: str, threads: int, command: str, packages: Sequence[str] = ()) -> dict:
    """The run's context, with the 1/5/15-minute load average at the start.

    Args:
        device: ``"cpu"`` or a CUDA device (then the GPU's name is recorded).
        threads: torch threads of the run.
        command: the command line that reproduces the run.
        packages: distribution names whose versions matter besides python and torch.
    """
    import torch

    name = cpu_name()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        name = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}; CPU {name}"
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions |= {package: _version(package) for package in packages}
    return dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        device=name, threads=threads, versions=versions, load_before=_load(),
        command=command,
    )  # fmt: skip


def threads_text(threads: int) -> str:
    """``"1 torch thread"``, ``"2 torch threads"``."""
    return f"{threads} torch thread{'' if threads == 1 else 's'}"


def model_batches(text: str) -> list[tuple[str, int]]:
    """``"name:batch,..."`` (a ``--models`` option) -> ``[(name, batch), ...]``; an
    ``argparse.ArgumentTypeError`` naming the expected form for anything else."""
    try:
        return [(name, int(batch)) for name, batch in (m.split(":") for m in text.split(","))]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected name:batch,..., got {text!r} ({error})"
        ) from None


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How to rerun ``benchmarks/<script>`` with ``argv`` (default: this process's arguments)."""
    return " ".join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def freed_memory_policy(keep: bool) -> str:
    """With ``keep``, glibc keeps freed memory in this process from now on
    (``spikezoo.runtime.keep_freed_memory``, for every implementation the process runs); what
    a report says about it. Exits with a message where glibc is not there to take it."""
    if not keep:
        return "glibc's defaults (a large fresh buffer may be faulted in page by page)"
    from spikezoo.runtime import keep_freed_memory

    if not keep_freed_memory():
        raise SystemExit("--keep-freed-memory: mallopt refused or absent (is the C library glibc?)")
    return "kept by glibc (spikezoo.runtime.keep_freed_memory) in the timing process"


def finish(env: dict) -> None:
    """Record the load at the end of the run."""
    env["load_after"] = _load()


def load_text(env: dict) -> str:
    """The load before and after the run, and whether it means the machine was busy."""
    before, after = env.get("load_before"), env.get("load_after")
    if before is None:
        return "load average unknown"
    text = f"1/5/15-minute load average {'/'.join(map(str, before))} at the start"
    if after is not None:
        text += f", {'/'.join(map(str, after))} at the end"
    cpus = os.cpu_count() or 1
    # the load at the end counts the run's own threads: only the start says what else ran
    busy = before[0] > 0.5 * cpus
    return text + (
        f" on {cpus} logical CPUs: the machine was **busy** with other jobs, so times are "
        "inflated and noisy; compare only ratios within this run"
        if busy
        else f" on {cpus} logical CPUs (idle)"
    )
