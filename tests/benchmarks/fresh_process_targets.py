"""Functions that ``tests/benchmarks/test_harness.py`` runs in fresh processes (no torch import)."""

from __future__ import annotations

MiB = 2**20


def allocate(memory, mib: int) -> int:
    """Touch ``mib`` MiB after the reset point; return how many bytes."""
    memory.reset()
    block = b"\x01" * (mib * MiB)  # written, so resident (a zeroed allocation may not be)
    return len(block)


def fail(memory, message: str) -> None:
    raise RuntimeError(message)
