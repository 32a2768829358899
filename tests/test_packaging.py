"""The distribution: ``spikezoo-vit`` wheel contents and metadata, built from a copy of the tree."""

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spikezoo"
#: The console script's module, beside the package (it must not import the package).
CONSOLE_MODULE = ROOT / "spikezoo_cli.py"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel ``python -m build`` makes of the package (copied, so the tree stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "spikezoo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CONSOLE_MODULE, source / CONSOLE_MODULE.name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("*.whl")
    return zipfile.ZipFile(path)


def package_files():
    """Every file of the source package and the console module, as the wheel names them."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    } | {CONSOLE_MODULE.name}


def test_wheel_is_spikezoo_vit_with_the_spikezoo_command(wheel):
    assert Path(wheel.filename).name.startswith("spikezoo_vit-")
    info = next(name for name in wheel.namelist() if name.endswith(".dist-info/METADATA"))
    metadata = email.message_from_bytes(wheel.read(info))
    assert metadata["Name"] == "spikezoo-vit"
    assert "pip install 'spikezoo-vit" in metadata.get_payload()  # the README is the description
    entry_points = wheel.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "spikezoo = spikezoo_cli:main" in entry_points


def test_wheel_ships_every_package_file_and_no_test_data(wheel):
    shipped = {name for name in wheel.namelist() if ".dist-info/" not in name}
    assert shipped == package_files()  # incl. neurons/cuda/*.cu and assets/*, where present
    assert not [name for name in shipped if name.startswith("tests/") or "/data/" in name]


def quick_start_commands():
    """The shell commands of the README's Quick start, in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, re.DOTALL)


def test_ci_runs_the_readme_test_command():
    install_and_run, test_command, *_ = quick_start_commands()
    assert install_and_run.startswith("pip install . && spikezoo ")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert f"readme_test_command='{test_command}'" in ci
    assert f"{test_command} || status=$?" in ci  # the line CI executes


def test_the_default_run_leaves_out_the_slow_tests_and_ci_runs_them():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pytest_options = pyproject["tool"]["pytest"]["ini_options"]
    assert '-m "not slow"' in pytest_options["addopts"]
    assert any(marker.startswith("slow:") for marker in pytest_options["markers"])
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "python -m pytest -m slow" in ci


def test_the_cpu_install_resolves_torch_together_with_spikezoo():
    """One pip command sees PyTorch's CPU index beside PyPI, so torch and torchvision come from
    there in versions spikezoo accepts; a torch-only first step could take any cached wheel."""
    _, _, cpu_install, *_ = quick_start_commands()
    pip_lines = [line for line in cpu_install.splitlines() if line.startswith("pip install")]
    assert pip_lines == [
        "pip install . --extra-index-url https://download.pytorch.org/whl/cpu   # or spikezoo-vit"
    ]
