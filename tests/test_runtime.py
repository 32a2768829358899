"""spikezoo.runtime: glibc keeps freed memory in the process once it is asked to."""

import subprocess
import sys

import pytest

from spikezoo import runtime

# A 64 MiB block is mapped on its own and unmapped when freed (glibc's mmap threshold rises to
# 32 MiB at most); a 16 MiB block after it is then mapped afresh and faulted in page by page,
# unless the freed memory stayed in the process. The child loads spikezoo/runtime.py alone and
# allocates through the C library (as torch's CPU allocator does), so it starts in milliseconds.
FAULTS_AFTER_A_FREE = """
import ctypes, importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("runtime", sys.argv[2])
runtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime)
if sys.argv[1] == "keep":
    assert runtime.keep_freed_memory() and runtime.freed_memory_kept()
else:
    assert not runtime.freed_memory_kept()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
def touched(size):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    return block
libc.free(ctypes.c_void_p(touched(64 << 20)))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touched(16 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_after_a_free(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_AFTER_A_FREE, mode, runtime.__file__],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(runtime._glibc() is None, reason="mallopt's thresholds are glibc's")
def test_freed_memory_is_reused_without_page_faults():
    kept, default = faults_after_a_free("keep"), faults_after_a_free("default")
    # 4,096 pages of 4 KiB, or a few huge pages, faulted in by default; none once kept
    assert kept < 64 and default > kept, (kept, default)


class FakeLibc:
    """``mallopt`` that takes an mmap threshold up to ``largest_mmap`` and any trim threshold,
    recording every call."""

    def __init__(self, largest_mmap: int) -> None:
        self.largest_mmap = largest_mmap
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return int(parameter != MMAP or value <= self.largest_mmap)


MMAP, TRIM, LARGEST = -3, -1, 2**31 - 1


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(runtime, "_kept", False)


@pytest.mark.parametrize(
    ("largest_mmap", "kept", "calls"),
    [
        (LARGEST, True, [(MMAP, LARGEST), (TRIM, LARGEST)]),
        # a glibc that takes an mmap threshold up to 32 MiB only
        (32 << 20, True, [(MMAP, LARGEST), (MMAP, 32 << 20), (TRIM, LARGEST)]),
        (1 << 20, False, [(MMAP, LARGEST), (MMAP, 32 << 20)]),
    ],
)
def test_glibc_gets_the_largest_thresholds_it_takes(
    monkeypatch, fresh_state, largest_mmap, kept, calls
):
    libc = FakeLibc(largest_mmap)
    monkeypatch.setattr(runtime, "_glibc", lambda: libc)
    assert runtime.keep_freed_memory() is kept and runtime.freed_memory_kept() is kept
    assert libc.calls == calls


def test_another_c_library_is_left_alone(monkeypatch, fresh_state):
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    assert runtime.keep_freed_memory() is False and runtime.freed_memory_kept() is False
