"""benchmarks/bench_gpu.py and run_gpu.sh, checked without a GPU through their dry run.

Nothing asserts on how long anything took: the tests check what ran, what was reported, and that
the shell script keeps to its budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("benchmarks_path")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # times two sizes
def test_lif_dry_run_reports_each_backend_against_the_copy_bandwidth(tmp_path, monkeypatch):
    import bench_gpu

    from spikezoo.neurons import backends

    # the run registers cupy-membranes: in this process only for this test
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))

    page = tmp_path / "lif.md"
    report = bench_gpu.main(["--part", "lif", "--dry-run", "--markdown", str(page)])
    assert report["dry_run"] and set(report["lif"]) == set(bench_gpu.STEPS)
    for result in report["lif"].values():
        assert result["neurons"] == 4096 and result["copy_bytes_per_s"] > 0
        for backend in ("cupy", "cupy-membranes"):  # unavailable here, and say why
            assert "CUDA" in result["rows"][backend]["error"]
        assert result["rows"]["torch"]["fraction_of_copy"] > 0
        assert result["rows"]["torch"]["profile"]["device_s"] > 0  # its kernels' own time
    assert backends.get_backend("cupy-membranes").backward_from_input is None
    text = page.read_text()
    assert "**dry run**" in text and "of copy bandwidth" in text and "target 0.6" in text
    assert "kernels ms" in text


@pytest.mark.slow  # two small models' training steps
def test_training_dry_run_times_spikezoo_and_says_why_the_authors_did_not_run():
    import bench_gpu

    report = bench_gpu.main(["--part", "training", "--dry-run"])
    assert set(report["training"]) == set(bench_gpu.BATCH_SIZES)
    for result in report["training"].values():
        assert result["batch"] == 2 and result["img_size"] == 32
        assert result["rows"]["spikezoo bf16"]["images_per_s"] > 0
        assert "dry run" in result["rows"]["authors fp32"]["error"]
        assert result["speedup"] is None


@pytest.mark.slow  # four implementations' training steps of two small models
def test_profile_dry_run_reports_step_and_busy_time_and_the_heaviest_operations(tmp_path):
    import bench_gpu

    page = tmp_path / "profile.md"
    report = bench_gpu.main(["--part", "profile", "--dry-run", "--markdown", str(page)])
    assert set(report["profile"]) == set(bench_gpu.BATCH_SIZES)
    for result in report["profile"].values():
        rows = result["rows"]
        assert "dry run" in rows.pop("authors fp32")["error"]
        assert set(rows) == {
            "spikezoo bf16",
            "spikezoo bf16, channels-last",
            "spikezoo bf16, unfused",
            "spikezoo bf16, uncompacted",
            "spikezoo bf16, unfused, uncompacted",
            "spikezoo fp32",
        }
        for row in rows.values():
            assert row["wall_s"] > 0 and row["device_s"] > 0
            assert len(row["top"]) == bench_gpu.PROFILE_TOP
            # counted on CUDA only
            assert row["synchronisations"] is None and row["peak_bytes"] is None
    assert "host waits: where" in page.read_text()


def test_waits_are_counted_where_the_step_made_them_and_nothing_else(monkeypatch):
    import warnings

    import bench_gpu
    import torch

    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def step():
        # what torch warns on the first switch to the debug mode (an H200 run counted it as a wait)
        warnings.warn(
            "Synchronization debug mode is a prototype feature and does not yet detect all "
            "synchronizing operations",
            UserWarning,
            stacklevel=1,
        )
        for _ in range(2):
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)

    sites = bench_gpu._synchronisations(step)
    assert list(sites.values()) == [2] and next(iter(sites)).startswith("benchmarks/test_")
    assert modes == ["warn", "default"]


def test_the_papers_batch_sizes_and_a_clear_error_without_cuda():
    import bench_gpu
    import torch

    assert bench_gpu.BATCH_SIZES == {"sdt_8_768": 36, "spikingresformer_s": 32}
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench_gpu.parse_args(["--part", "lif"])


def _run_script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, OUT=str(tmp_path), DRY_RUN="1", PYTHON=sys.executable, **env)
    return subprocess.run(
        ["bash", "benchmarks/run_gpu.sh"], cwd=REPO, env=environment, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow  # starts python to record the versions
def test_run_gpu_skips_a_step_whose_timeout_does_not_fit_the_budget(tmp_path):
    done = _run_script(
        tmp_path, TOTAL_BUDGET="30", STEP_TIMEOUT_LIF="40", STEP_TIMEOUT_TRAINING="50"
    )
    assert done.returncode == 1
    steps = (tmp_path / "steps.log").read_text()
    assert "lif: skipped, its timeout 40s exceeds" in steps
    assert "training: skipped, its timeout 50s exceeds" in steps
    assert "profile: skipped, its timeout 120s exceeds" in steps
    assert not (tmp_path / "lif.json").exists()


@pytest.mark.slow  # one benchmark process
def test_run_gpu_runs_the_steps_named_in_steps_only(tmp_path):
    done = _run_script(tmp_path, STEPS="lif")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "lif.json").exists()
    assert not (tmp_path / "training.json").exists() and not (tmp_path / "profile.json").exists()


@pytest.mark.slow  # three benchmark processes
def test_run_gpu_dry_run_runs_every_step(tmp_path):
    done = _run_script(tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads((tmp_path / "lif.json").read_text())["dry_run"]
    assert "sdt_8_768" in json.loads((tmp_path / "training.json").read_text())["training"]
    assert "sdt_8_768" in json.loads((tmp_path / "profile.json").read_text())["profile"]
    assert "tests: skipped in a dry run" in (tmp_path / "steps.log").read_text()
