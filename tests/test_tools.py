"""The scripts under ``tools/``: the README's timings."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("time_readme", ROOT / "tools" / "time_readme.py")
time_readme = sys.modules["time_readme"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(time_readme)


def test_every_command_timed_is_a_command_of_the_readme():
    readme = (ROOT / "README.md").read_text()
    for argv in time_readme.COMMANDS.values():
        assert f"spikezoo {' '.join(argv)}" in readme


def test_the_summary_gives_the_first_run_and_the_range_of_the_warm_runs():
    first = time_readme.Timing(wall=41.2, cpu=30.0)
    warm = [time_readme.Timing(12.3, 8.0), time_readme.Timing(15.0, 8.4)]
    assert time_readme.summary_line(["profile", "sdt_8_384"], first, warm) == (
        "`spikezoo profile sdt_8_384`: first run 41 s (CPU 30 s); "
        "later runs 12-15 s (CPU 8.0-8.4 s)"
    )
    assert time_readme.summary_line(["list"], time_readme.Timing(0.21, 0.1), []) == (
        "`spikezoo list`: first run 0.2 s (CPU 0.1 s)"
    )


def test_the_script_times_spikezoo_list_and_keeps_what_it_printed(tmp_path):
    script = str(ROOT / "tools" / "time_readme.py")
    result = subprocess.run(
        [sys.executable, script, "list", "--repeats", "1", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    command, machine = result.stdout.splitlines()
    assert command.startswith("`spikezoo list`: first run ") and "; later runs " in command
    assert machine.startswith("measured on ") and "load average" in machine
    assert "sdt_8_384" in (tmp_path / "list.txt").read_text().split()


def test_an_unknown_command_is_refused():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "time_readme.py"), "lst"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "unknown command 'lst'; expected some of list, profile, demo" in result.stderr
