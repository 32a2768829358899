"""Interleaved timing of competing implementations through ``torch.utils.benchmark``.

Every implementation is one zero-argument call. Its first call is timed on its own, exactly once
(it includes compilation and lazy initialisation). ``torch.utils.benchmark.Timer``'s
``blocked_autorange`` then warms it up and picks how many calls make one block of at least
``min_block_s``. The measured rounds run one block of each implementation in a rotating order, so
that background load falls on all alike; a block is timed by the standard library's
``timeit.Timer`` with torch's synchronising clock (``Timer.timeit`` would add two unmeasured
warm-up calls per block, doubling the cost of a slow call). The blocks of each implementation
form one :class:`~torch.utils.benchmark.Measurement`: its median is the median of the rounds,
and :func:`compare` prints them with ``torch.utils.benchmark.Compare``. Ratios compare medians
measured in the same run.
"""

from __future__ import annotations

import dataclasses
import statistics
import timeit
from collections.abc import Callable, Mapping

from torch.utils.benchmark import Compare, Measurement, Timer
from torch.utils.benchmark.utils.common import TaskSpec, set_torch_threads
from torch.utils.benchmark.utils.timer import timer as synchronized_clock

__all__ = [
    "Timing", "compare", "error_text", "interleaved", "paired_ratio", "ratio", "time_once",
]  # fmt: skip


@dataclasses.dataclass
class Timing:
    """One implementation's timing: its first call, then the merged rounds (or why it failed)."""

    first_call_s: float | None = None
    measurement: Measurement | None = None
    error: str | None = None

    @property
    def median_s(self) -> float:
        """Median seconds per call over the measured rounds."""
        if self.measurement is None:
            raise ValueError(f"no measurement: {self.error}")
        return self.measurement.median

    def to_dict(self) -> dict:
        """The JSON form: median, min, max, IQR and every round's seconds per call."""
        if self.measurement is None:
            return dict(error=self.error)
        times = self.measurement.times
        return dict(
            median_s=self.measurement.median, min_s=min(times), max_s=max(times),
            iqr_s=self.measurement.iqr, times_s=list(times),
            calls_per_round=self.measurement.number_per_run, first_call_s=self.first_call_s,
        )  # fmt: skip


def error_text(error: BaseException) -> str:
    """The exception's type and the first line of its message (for a report)."""
    first_line = (str(error).splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line[:200]}"


def time_once(call: Callable[[], object]) -> float:
    """Seconds of exactly one ``call()`` (a first call, a training step that changes state)."""
    return timeit.Timer(call, timer=synchronized_clock).timeit(1)


def interleaved(
    calls: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    threads: int,
    label: str = "",
    sub_label: str = "",
    warmup_rounds: int = 0,
    min_block_s: float = 0.05,
) -> dict[str, Timing]:
    """Time every call of ``calls`` in ``repeats`` interleaved rounds.

    Args:
        calls: implementation name -> zero-argument function running one measured call.
        repeats: measured rounds (each runs one block of every implementation).
        threads: torch threads while timing.
        label, sub_label: what :func:`compare` groups by (e.g. model, then variant).
        warmup_rounds: unmeasured interleaved rounds after ``blocked_autorange``'s warm-up.
        min_block_s: the shortest block of calls worth timing.

    Returns:
        name -> :class:`Timing`; an implementation whose first call raises is reported with the
        error and not timed further.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    clocks = {name: timeit.Timer(call, timer=synchronized_clock) for name, call in calls.items()}
    timings = {name: Timing() for name in calls}
    calls_per_block: dict[str, int] = {}
    with set_torch_threads(threads):
        for name, call in calls.items():
            try:
                timings[name].first_call_s = clocks[name].timeit(1)
                warmup = Timer("call()", globals={"call": call}, num_threads=threads)
                calls_per_block[name] = warmup.blocked_autorange(
                    min_run_time=min_block_s
                ).number_per_run
            except Exception as error:  # a failed compile or kernel: reported, the others go on
                timings[name].error = error_text(error)
        names = list(calls_per_block)
        rounds: dict[str, list[float]] = {name: [] for name in names}
        for index in range(warmup_rounds + repeats):
            shift = index % max(len(names), 1)
            for name in names[shift:] + names[:shift]:
                seconds = clocks[name].timeit(calls_per_block[name])
                if index >= warmup_rounds:
                    rounds[name].append(seconds)
    for name in names:
        task = TaskSpec(
            "call()", "pass", label=label, sub_label=sub_label, description=name,
            num_threads=threads,
        )  # fmt: skip
        timings[name].measurement = Measurement(calls_per_block[name], rounds[name], task)
    return timings


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` where either is missing or zero."""
    if not numerator or not denominator:
        return None
    return numerator / denominator


def paired_ratio(timing: Timing, reference: Timing) -> float | None:
    """Median over the rounds of ``reference``'s time / ``timing``'s time in the same round."""
    if timing.measurement is None or reference.measurement is None:
        return None
    pairs = zip(reference.measurement.times, timing.measurement.times, strict=True)
    return statistics.median(ref / own for ref, own in pairs)


def compare(timings: list[dict[str, Timing]]) -> str:
    """``torch.utils.benchmark.Compare``'s console table of every measured timing."""
    measurements = [t.measurement for group in timings for t in group.values() if t.measurement]
    if not measurements:
        return ""
    table = Compare(measurements)
    table.trim_significant_figures()
    return str(table)
