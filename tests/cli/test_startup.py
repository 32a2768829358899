"""How the command starts: the console script, ``python -m spikezoo``, and what they import."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import spikezoo
import spikezoo_cli

ROOT = Path(__file__).resolve().parents[2]
#: What pip writes into the ``spikezoo`` console script for ``[project.scripts]``.
CONSOLE_SCRIPT = "import sys\nfrom spikezoo_cli import main\nsys.exit(main())\n"


def run_python(*args, cwd=ROOT):
    """``python args`` with the repository on the path; the finished process."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=environ
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


def test_the_console_script_is_the_one_pyproject_declares():
    assert 'spikezoo = "spikezoo_cli:main"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("argv", [["--version"], ["--help"], []])
@pytest.mark.parametrize("entry", ["console script", "python -m spikezoo_cli"])
def test_version_and_help_do_not_import_torch(argv, entry, console_script):
    start = [str(console_script)] if entry == "console script" else ["-m", "spikezoo_cli"]
    result = run_python("-X", "importtime", *start, *argv)
    assert result.returncode == 0, result.stderr
    modules = imported_modules(result.stderr)
    assert "argparse" in modules  # the log is read correctly
    assert not modules & {"spikezoo", "torch", "timm", "numpy"}
    if argv == ["--version"]:
        assert result.stdout.strip() == f"spikezoo-vit {spikezoo.__version__}"
    else:
        assert result.stdout.startswith("usage: spikezoo [-h] [--version] [--debug] COMMAND")


def test_both_entries_print_the_same_overview(console_script):
    light = run_python(str(console_script), "--help")
    full = run_python("-m", "spikezoo", "--help")
    assert light.returncode == full.returncode == 0
    assert light.stdout == full.stdout


def test_import_spikezoo_is_the_same_in_a_script_called_spikezoo(tmp_path):
    """A script named like the command imports the models as any other does (this suite
    imports them in-process under ``pytest``'s name)."""
    script = tmp_path / "spikezoo"
    script.write_text(
        "import sys, timm, spikezoo\n"
        "print(timm.is_model('sdt_8_768'), 'spikezoo.models' in sys.modules)\n"
    )
    result = run_python(str(script), cwd=tmp_path)
    assert result.stdout.split() == ["True", "True"], result.stderr


@pytest.mark.parametrize("entry", [["-m", "spikezoo"], ["-m", "spikezoo_cli"]])
def test_a_command_runs_through_both_entries(entry):
    result = run_python(*entry, "list", "sdt_8_*")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sdt_8_384", "sdt_8_512", "sdt_8_768"]


def test_a_usage_error_is_worded_by_the_full_parser(console_script):
    result = run_python(str(console_script), "--bogus")
    assert result.returncode == 2
    assert result.stderr == (
        "spikezoo: error: unrecognized arguments: --bogus (see 'spikezoo --help')\n"
    )


def test_a_folder_named_spikezoo_that_shadows_the_package_is_named(tmp_path):
    """Python started in the folder that holds the clone finds the clone's root first and
    imports it as an empty namespace package; the console script says so instead of failing
    on a missing module (``-S``: no site-packages, so no installed copy is found either)."""
    clone = tmp_path / "spikezoo"
    clone.mkdir()
    (clone / "pyproject.toml").write_text("[project]\nname = 'spikezoo-vit'\n")
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "spikezoo_cli.py").write_text((ROOT / "spikezoo_cli.py").read_text())
    code = f"import sys; sys.path.append({str(scripts)!r}); import spikezoo_cli; "
    code += "sys.exit(spikezoo_cli.main(['list']))"
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environ,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"spikezoo: error: 'import spikezoo' finds the folder {clone}, which has no __init__.py, "
        "instead of the installed package (Python looks in the current directory first and "
        "imports such a folder as an empty namespace package, so no model would be registered "
        "with timm): start Python in another directory, e.g. inside the clone, or clone the "
        "repository into a folder with another name ('git clone URL spikezoo-vit')"
    ]


def test_the_installed_package_is_not_reported_as_shadowed():
    result = run_python("-c", "import spikezoo_cli; print(spikezoo_cli.shadowing_folder())")
    assert result.returncode == 0 and result.stdout == "None\n", result.stderr


def test_list_answers_from_the_source_without_importing_torch(console_script):
    result = run_python("-X", "importtime", str(console_script), "list")
    assert result.returncode == 0, result.stderr
    modules = imported_modules(result.stderr)
    assert "argparse" in modules  # the log is read correctly
    assert not modules & {"spikezoo", "torch", "timm", "numpy"}
    assert result.stdout.split() == list(spikezoo.models.MODEL_NAMES)


def test_the_names_read_from_the_source_are_the_registry():
    assert spikezoo_cli.model_names_from_source() == list(spikezoo.models.MODEL_NAMES)


@pytest.mark.parametrize(
    ("argv", "out", "err"),
    [
        (["list", "spikingresformer_[st]*"], "spikingresformer_s\nspikingresformer_ti\n", ""),
        # a pattern that matches nothing is worded by the full command, with its hint
        (["list", "sdt_9*"], "", "spikezoo list: error: no spikezoo model matches 'sdt_9*'"),
        (["list", "--pretrained", "sdt_8_768*"], "sdt_8_768.in1k\n", ""),
    ],
)
def test_list_from_the_source_and_the_full_command_agree(argv, out, err, capsys):
    code = spikezoo_cli.main(argv)
    captured = capsys.readouterr()
    assert (code == 0) == (not err)
    assert captured.out == out and captured.err.startswith(err)
