"""benchmarks/memory_peak.py: the blocks alive at a training step's peak, by phase and op."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("benchmarks_path")

MiB = 2**20


def test_the_peak_and_what_is_alive_then():
    from memory_peak import alive_at_peak

    forward, backward = ("aten::empty",), ("autograd::engine::evaluate_function: XBackward",)
    events = [
        (0, 1, 3 * MiB, forward),
        (1, 2, 2 * MiB, forward),
        (2, 1, -3 * MiB, forward),
        (3, 3, 4 * MiB, backward),  # the peak: 2 + 4 MiB
        (4, 3, -4 * MiB, backward),
        (5, 9, -8 * MiB, backward),  # freed, but allocated before the step: not counted
    ]
    peak, alive = alive_at_peak(events)
    assert peak == 6 * MiB
    assert sorted(alive) == [(2 * MiB, forward), (4 * MiB, backward)]


def test_a_profiled_training_step_names_forward_and_backward_blocks():
    from memory_peak import alive_at_peak, allocations, label

    layer = torch.nn.Linear(64, 64)
    x = torch.randn(4096, 64)

    def step() -> None:
        torch.relu(layer(x)).square().sum().backward()

    step()
    peak, alive = alive_at_peak(allocations(step))
    kept = sum(n for n, ops in alive if label(ops)[0] == "forward")
    assert kept >= 4096 * 64 * 4  # relu's output, saved for its backward
    assert peak >= kept
    assert {label(ops)[0].split(" ")[0] for _, ops in alive} <= {"forward", "backward"}
