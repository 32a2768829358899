"""benchmarks/harness: interleaved timing, the fresh-process protocol, the run's context.

Nothing asserts on how long anything took: the tests check which calls ran, in which order, and
what came back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("benchmarks_path")


def test_interleaved_rotates_rounds_and_reports_failures():
    from harness.timing import compare, interleaved, paired_ratio

    log: list[str] = []
    calls = {name: (lambda name=name: log.append(name)) for name in "abc"}

    def broken() -> None:
        raise RuntimeError("no kernel\nfor this")

    timings = interleaved(
        calls | {"broken": broken}, repeats=3, threads=1, min_block_s=0.0, label="toy"
    )
    assert timings["broken"].error == "RuntimeError: no kernel"
    assert timings["broken"].to_dict() == {"error": "RuntimeError: no kernel"}
    # min_block_s=0: one call per block; the measured rounds start one implementation later
    assert log[-9:] == list("abcbcacab")
    for name in "abc":
        entry = timings[name].to_dict()
        assert len(entry["times_s"]) == 3 and entry["calls_per_round"] == 1
        assert entry["min_s"] <= entry["median_s"] <= entry["max_s"]
        assert entry["first_call_s"] > 0
    assert paired_ratio(timings["a"], timings["a"]) == 1.0
    assert "toy" in compare([timings])
    with pytest.raises(ValueError, match="repeats must be >= 1, got 0"):
        interleaved(calls, repeats=0, threads=1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_fresh_process_returns_result_and_peak_memory():
    from harness.process import run_in_fresh_process

    result = run_in_fresh_process(
        "tests.benchmarks.fresh_process_targets:allocate", {"mib": 64}, timeout=120
    )
    assert result.value == 64 * 2**20
    assert result.counter == "VmHWM"
    # a few pages of the block may reuse memory the allocator already held
    assert 60 * 2**20 <= result.peak_bytes < 256 * 2**20


def test_fresh_process_failure_names_the_error():
    from harness.process import ChildFailed, run_in_fresh_process

    with pytest.raises(ChildFailed, match="RuntimeError: the child says no"):
        run_in_fresh_process(
            "tests.benchmarks.fresh_process_targets:fail", {"message": "the child says no"}
        )
    with pytest.raises(ValueError, match="'module:function', got 'allocate'"):
        run_in_fresh_process("allocate")


def test_load_text_says_when_the_machine_was_busy(monkeypatch):
    from harness import environment

    monkeypatch.setattr(environment.os, "cpu_count", lambda: 2)
    busy = environment.load_text(dict(load_before=[6.1, 5.0, 3.2], load_after=[7.0, 6.0, 4.0]))
    assert "6.1/5.0/3.2 at the start, 7.0/6.0/4.0 at the end" in busy and "**busy**" in busy
    assert "(idle)" in environment.load_text(dict(load_before=[0.2, 0.1, 0.1], load_after=None))
    # a run's own two threads raise the load at its end: still an idle machine
    assert "(idle)" in environment.load_text(dict(load_before=[0.5, 0.7, 0.9], load_after=[1.9]))
    env = environment.environment("cpu", 2, "python benchmarks/x.py", ("timm",))
    environment.finish(env)
    assert env["versions"]["timm"] and len(env["load_after"]) == 3


def test_write_generated_replaces_only_its_own_part(tmp_path):
    from harness.markdown import markers, table, write_generated

    begin, end = markers("bench_x")
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{begin}\nold\n{end}\n{markers('bench_y')[0]}\nkept\n")
    write_generated(page, "bench_x", table(["a", "b"], [["1", 2.5]]))
    text = page.read_text()
    assert text.startswith(f"intro\n{begin}\n\n| a |   b |\n|---|-----|\n| 1 | 2.5 |\n\n{end}\n")
    assert text.endswith("kept\n") and "old" not in text
    fresh = tmp_path / "fresh.md"
    write_generated(fresh, "bench_x", "text")
    assert fresh.read_text() == f"{begin}\n\ntext\n\n{end}\n"


def test_save_writes_the_report_and_the_page_only_where_asked(tmp_path):
    from harness.markdown import markers, save

    page, report = tmp_path / "page.md", tmp_path / "report.json"
    save("bench_x", {"a": [1, 2]}, "text", report, page)
    assert json.loads(report.read_text()) == {"a": [1, 2]}
    assert page.read_text() == f"{markers('bench_x')[0]}\n\ntext\n\n{markers('bench_x')[1]}\n"
    save("bench_x", {"a": 3}, "other", None, None)
    assert json.loads(report.read_text()) == {"a": [1, 2]} and "other" not in page.read_text()


def test_bench_neurons_tables_on_a_tiny_input(tmp_path):
    pytest.importorskip("spikingjelly.activation_based")
    import bench_neurons

    page = tmp_path / "page.md"
    report = bench_neurons.main(
        [
            "--sizes", "2x64", "--repeats", "2", "--warmup", "0", "--rss-runs", "0",
            "--threads", "1", "--impls", "spikezoo-torch,spikingjelly", "--markdown", str(page),
        ]
    )  # fmt: skip
    (case,) = report["cases"]
    assert case["reference"] == "spikingjelly"
    assert case["rows"]["spikezoo-torch"]["spikes_identical"]
    assert case["rows"]["spikingjelly"]["ratio_spikezoo-torch"] > 0
    assert "**T = 2, N = 64**" in page.read_text() and "| spikezoo-torch" in page.read_text()
    # the roofline: a tensor add in the same rounds, and the neuron's fraction of its bandwidth
    assert case["tensor_add"]["bandwidth_bytes_per_s"] > 0
    assert case["rows"]["spikezoo-torch"]["fraction_of_add_bandwidth"] > 0
    assert "fraction_of_add_bandwidth" not in case["rows"]["spikingjelly"]
    assert "tensor add `x + g` in the same rounds" in page.read_text()
    assert "1 torch thread;" in page.read_text()


@pytest.mark.slow  # compiles the inductor kernels
def test_bench_neurons_says_when_a_size_compiled_nothing(tmp_path):
    """The second size reuses the first size's kernels: no "first call 0.00 s" compile time."""
    import bench_neurons

    report = bench_neurons.main(
        [
            "--sizes", "4x64,4x96", "--repeats", "1", "--warmup", "0", "--rss-runs", "0",
            "--threads", "1", "--impls", "spikezoo-inductor", "--reuse-compile-cache",
        ]
    )  # fmt: skip
    first, second = report["cases"]
    assert first["dynamo_frames_compiled"] > 0 and second["dynamo_frames_compiled"] == 0
    notes = bench_neurons._case_notes(second)
    assert any("compiled nothing for this size" in note for note in notes)


def test_freed_memory_policy_keeps_it_through_spikezoo_runtime_or_exits(monkeypatch):
    from harness.environment import freed_memory_policy

    from spikezoo import runtime

    assert freed_memory_policy(False).startswith("glibc's defaults")
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    assert "spikezoo.runtime.keep_freed_memory" in freed_memory_policy(True) and calls == [1]
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: False)
    with pytest.raises(SystemExit, match="is the C library glibc"):
        freed_memory_policy(True)
