"""How the command starts: ``python -m spikezoo``, the console script, and what they import."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import spikezoo

ROOT = Path(__file__).resolve().parents[2]
#: What pip writes into the ``spikezoo`` console script ([project.scripts] in pyproject.toml).
CONSOLE_SCRIPT = "import sys\nfrom spikezoo.cli import main\nsys.exit(main())\n"


def run_python(*args, **env):
    """``python args`` from the repository root; the finished process."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=environ
    )


def imported_modules(importtime_log):
    """The top-level packages named in ``python -X importtime``'s log."""
    return {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in importtime_log.splitlines()
        if line.startswith("import time:")
    }


@pytest.fixture(scope="module")
def console_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("bin") / "spikezoo"
    path.write_text(CONSOLE_SCRIPT)
    return path


@pytest.mark.parametrize("flag", ["--version", "--help"])
@pytest.mark.parametrize("entry", ["python -m spikezoo", "console script"])
def test_version_and_help_do_not_import_torch(flag, entry, console_script):
    start = ["-m", "spikezoo"] if entry == "python -m spikezoo" else [str(console_script)]
    result = run_python("-X", "importtime", *start, flag)
    assert result.returncode == 0, result.stderr
    modules = imported_modules(result.stderr)
    assert "spikezoo" in modules  # the log is read correctly
    assert not modules & {"torch", "timm", "numpy"}, modules & {"torch", "timm", "numpy"}
    if flag == "--version":
        assert result.stdout.strip() == f"spikezoo-vit {spikezoo.__version__}"


def test_import_spikezoo_still_registers_the_models():
    result = run_python(
        "-c", "import spikezoo, timm; print(timm.is_model('sdt_8_768'), spikezoo.models.__name__)"
    )
    assert result.stdout.split() == ["True", "spikezoo.models"], result.stderr


def test_a_command_run_through_python_dash_m():
    result = run_python("-m", "spikezoo", "list", "sdt_8_*")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sdt_8_384", "sdt_8_512", "sdt_8_768"]
