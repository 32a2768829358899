"""benchmarks/bench_freed_memory.py: pairs of fresh processes, glibc's defaults and freed
memory kept. Nothing asserts on how long anything took."""

from __future__ import annotations

import pytest

from spikezoo import runtime

pytestmark = pytest.mark.usefixtures("benchmarks_path")


@pytest.mark.slow  # fresh processes that import torch and build models: about 9 s
@pytest.mark.skipif(runtime._glibc() is None, reason="mallopt's thresholds are glibc's")
def test_a_round_runs_both_settings_and_writes_its_table(tmp_path):
    import bench_freed_memory
    from harness.markdown import markers

    begin, end = markers("bench_freed_memory")
    page = tmp_path / "page.md"
    page.write_text(f"before\n{begin}\nold\n{end}\n")
    report = bench_freed_memory.main(
        [
            "--models", "sdt_2_256_cifar:1", "--tasks", "infer", "--rounds", "1",
            "--warmup", "1", "--calls", "2", "--threads", "1", "--markdown", str(page),
        ]
    )  # fmt: skip
    record = report["results"]["sdt_2_256_cifar:1:infer"]
    for setting in ("default", "kept"):
        (run,) = record["runs"][setting]
        assert len(run["seconds"]) == 2 and run["resident_bytes"] > 0
    # the kept process reuses its pages: fewer fresh ones faulted in per call
    faults = {s: record["runs"][s][0]["faults_per_call"] for s in ("default", "kept")}
    assert faults["kept"] < faults["default"], faults
    assert record["speedup"] > 0 and record["paired_speedup"] > 0
    text = page.read_text()
    assert text.startswith("before\n") and "old" not in text
    assert "| sdt_2_256_cifar b1 | infer |" in text and "faults/call kept" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "sdt_8_384"], "--models: expected name:batch"),
        (["--tasks", "fit"], "--tasks: expected a comma-separated subset"),
        (["--calls", "0"], "--calls: expected at least 1, got 0"),
    ],
)
def test_wrong_arguments_are_named(capsys, argv, message):
    import bench_freed_memory

    with pytest.raises(SystemExit):
        bench_freed_memory.parse_args(argv)
    assert message in capsys.readouterr().err
