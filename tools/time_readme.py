"""Time the README's quick-start commands, first and warm runs, and print the lines to paste.

    python tools/time_readme.py                      # every command, 3 warm runs each
    python tools/time_readme.py --repeats 5 list     # only `spikezoo list`
    python tools/time_readme.py --output out profile # and keep what it printed, out/profile.txt

Each command runs as ``python -m spikezoo_cli ...`` (the console script's module) with this
interpreter, in a temporary folder, with the environment as it is. The first run of a command
gets a fresh, empty PyTorch compile cache (``TORCHINDUCTOR_CACHE_DIR``), as on a machine where
nothing was compiled yet; the warm runs share the cache that run left. Wall time and CPU time
(user + system of the command's process) are both reported: on a loaded machine the wall time
grows while the CPU time stays near what the command needs. The last lines say the machine's
core count and load average, so that a figure measured on a busy machine is labelled as such.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: The README's commands, by the name this script takes on its command line.
COMMANDS: dict[str, list[str]] = {
    "list": ["list"],
    "profile": ["profile", "sdt_8_384"],
    "demo": ["demo"],
}


@dataclass(frozen=True)
class Timing:
    """One run of a command: seconds of wall time and of CPU time (user + system)."""

    wall: float
    cpu: float


def run_once(argv: list[str], cache_dir: Path, cwd: Path) -> tuple[Timing, str]:
    """Run ``spikezoo argv`` once with ``cache_dir`` as the compile cache; its timing and stdout.

    Raises ``RuntimeError`` with the command's stderr if it fails.
    """
    environ = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache_dir)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "spikezoo_cli", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"spikezoo {' '.join(argv)} failed: {result.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu), result.stdout


def time_command(argv: list[str], repeats: int) -> tuple[Timing, list[Timing], str]:
    """The first run (fresh compile cache) and ``repeats`` warm runs of ``spikezoo argv``, and
    what the last run printed."""
    with tempfile.TemporaryDirectory() as scratch:
        cache_dir, cwd = Path(scratch) / "inductor-cache", Path(scratch)
        first, printed = run_once(argv, cache_dir, cwd)
        warm = []
        for _ in range(repeats):
            timing, printed = run_once(argv, cache_dir, cwd)
            warm.append(timing)
    return first, warm, printed


def seconds(value: float) -> str:
    """``value`` seconds, to one decimal under 10 s and whole seconds above."""
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def span(values: list[float]) -> str:
    """``"a s"`` or ``"a-b s"``: the range of ``values``."""
    low, high = seconds(min(values)), seconds(max(values))
    return low if low == high else f"{low.removesuffix(' s')}-{high}"


def summary_line(argv: list[str], first: Timing, warm: list[Timing]) -> str:
    """One line for the README: the first run, the range of the warm runs, CPU times."""
    warm_part = ""
    if warm:
        warm_part = (
            f"; later runs {span([t.wall for t in warm])} (CPU {span([t.cpu for t in warm])})"
        )
    return (
        f"`spikezoo {' '.join(argv)}`: first run {seconds(first.wall)} "
        f"(CPU {seconds(first.cpu)}){warm_part}"
    )


def machine_line() -> str:
    """The cores and the load average, and whether the machine counts as loaded."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    state = "a loaded machine" if load > cores else "a quiet machine"
    return f"measured on {cores} cores at a load average of {load:.1f} ({state})"


def main(argv: list[str] | None = None) -> int:
    """Time the chosen commands and print one line per command, then the machine's line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commands", nargs="*", help=f"some of {', '.join(COMMANDS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per command")
    parser.add_argument(
        "--output", type=Path, help="folder for what each command printed (NAME.txt)"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.commands if name not in COMMANDS]
    if unknown:
        parser.error(f"unknown command {unknown[0]!r}; expected some of {', '.join(COMMANDS)}")
    if args.repeats < 0:
        parser.error(f"--repeats must be >= 0, got {args.repeats}")
    for name in args.commands or COMMANDS:
        first, warm, printed = time_command(COMMANDS[name], args.repeats)
        print(summary_line(COMMANDS[name], first, warm), flush=True)
        if args.output is not None:
            args.output.mkdir(parents=True, exist_ok=True)
            (args.output / f"{name}.txt").write_text(printed)
    print(machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
