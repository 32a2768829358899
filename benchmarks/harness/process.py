"""Run one function in a fresh Python process; get back its result and its peak memory.

The function is named ``"module:function"`` (importable with ``benchmarks/`` and the repository
root on ``sys.path``) and called as ``function(memory, **kwargs)`` with JSON keyword arguments.
``memory`` is the child's :class:`PeakMemory`: the function calls ``memory.reset(device)`` right
before the part it measures, and the peak reported is the rise above that point (the whole
process if it never resets). On a CPU the peak is Linux's resident high-water mark (``VmHWM``,
reset through ``/proc/self/clear_refs``), else ``ru_maxrss``; on CUDA it is
``torch.cuda.max_memory_allocated``. The child is started through a small launcher process, so
that it does not inherit this (large) process's ``ru_maxrss``.

    result = run_in_fresh_process("bench_compile:first_call", dict(steps=64), env=...)
    result.value, result.peak_bytes
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

__all__ = ["ChildFailed", "PeakMemory", "ProcessResult", "run_in_fresh_process", "status_bytes"]

BENCHMARKS = Path(__file__).resolve().parents[1]
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


class ChildFailed(RuntimeError):
    """The fresh process raised, crashed or ran out of time; the message has its output."""


@dataclasses.dataclass
class ProcessResult:
    """What the fresh process returned and how much memory it took above its reset point."""

    value: Any
    peak_bytes: int
    counter: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def status_bytes(field: str) -> int | None:
    """A memory field of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in bytes, if there is one."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


class PeakMemory:
    """The child's peak memory above the last :meth:`reset` (see the module docstring)."""

    def __init__(self) -> None:
        self.device = "cpu"
        self.counter = "VmHWM" if status_bytes("VmHWM") is not None else "ru_maxrss"
        self.baseline = 0

    def reset(self, device: str = "cpu") -> None:
        """Measure from here on, on ``device`` (``"cpu"`` or a CUDA device)."""
        self.device = str(device)
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.counter, self.baseline = "max_memory_allocated", torch.cuda.memory_allocated()
            return
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # the high-water mark drops to the current resident size
        except OSError:
            self.counter = "ru_maxrss"
        self.baseline = status_bytes("VmHWM") if self.counter == "VmHWM" else _maxrss_bytes()

    def rise(self) -> int:
        """Bytes of the peak above the baseline."""
        if self.counter == "max_memory_allocated":
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.baseline
        peak = status_bytes("VmHWM") if self.counter == "VmHWM" else _maxrss_bytes()
        return peak - self.baseline


def run_in_fresh_process(
    target: str,
    kwargs: dict | None = None,
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> ProcessResult:
    """``target(memory, **kwargs)`` in a fresh Python process (see the module docstring).

    Args:
        target: ``"module:function"``, importable from ``benchmarks/`` or the repository root.
        kwargs: JSON-serialisable keyword arguments.
        env: extra environment variables of the child (added to this process's).
        timeout: seconds before the child is killed.

    Raises:
        ChildFailed: the function raised, the process crashed or ran past ``timeout``.
    """
    if ":" not in target:
        raise ValueError(f"target must be 'module:function', got {target!r}")
    with tempfile.TemporaryDirectory(prefix="spikezoo-bench-") as folder:
        output = Path(folder) / "result.json"
        command = [sys.executable, "-c", LAUNCHER, sys.executable, __file__, target]
        command += [json.dumps(kwargs or {}), str(output)]
        try:
            done = subprocess.run(
                command, env=os.environ | (env or {}), capture_output=True, text=True,
                timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired as error:
            raise ChildFailed(f"{target}: no result within {timeout} s") from error
        if done.returncode != 0 or not output.exists():
            tail = (done.stdout + done.stderr)[-3000:]
            raise ChildFailed(f"{target}: the process exited with {done.returncode}:\n{tail}")
        return ProcessResult(**json.loads(output.read_text()))


def _child(target: str, kwargs_json: str, output: str) -> None:
    # instead of this file's folder, whose module names (markdown, ...) would shadow packages
    sys.path[0] = str(BENCHMARKS)
    sys.path.insert(1, str(BENCHMARKS.parent))
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    memory = PeakMemory()
    value = function(memory, **json.loads(kwargs_json))
    result = ProcessResult(value=value, peak_bytes=memory.rise(), counter=memory.counter)
    Path(output).write_text(json.dumps(result.to_dict()))


if __name__ == "__main__":
    try:
        _child(*sys.argv[1:])
    except Exception:
        traceback.print_exc()
        sys.exit(1)
