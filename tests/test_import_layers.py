"""No import runs up a tier: every ``import`` of the package, read with ``ast`` (nothing is
imported), against the tiers written down in :mod:`spikezoo._tiers`."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import spikezoo
from spikezoo._tiers import TIERS

PACKAGE_DIR = Path(spikezoo.__file__).parent


@dataclass(frozen=True)
class UpwardImport:
    """``module`` (line ``line``) imports ``target`` from a higher tier."""

    module: str
    line: int
    target: str
    module_tier: str
    target_tier: str

    def __str__(self) -> str:
        return (
            f"{self.module}:{self.line} imports {self.target}: the {self.module_tier!r} tier "
            f"may not import from the {self.target_tier!r} tier above it"
        )


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package in ``package_dir`` -> its file (``__init__`` names the
    package)."""
    package = package_dir.name
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (package, *path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(module: str, path: Path, modules: set[str]) -> Iterator[tuple[int, str]]:
    """``(line, module)`` for every import of a module in ``modules`` in one file: ``import``
    and ``from`` statements anywhere (function-local ones too, relative ones resolved) and
    ``importlib.import_module`` with a literal name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            # ``from package import submodule`` imports the submodule
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        elif _is_import_module_call(node):
            names = [node.args[0].value]
        else:
            continue
        yield from ((node.lineno, name) for name in names if _in(name, modules))


def _is_import_module_call(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Call) and node.args):
        return False
    function = node.func
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
    first = node.args[0]
    return (
        name == "import_module" and isinstance(first, ast.Constant) and isinstance(first.value, str)
    )


def _in(name: str, modules: set[str]) -> bool:
    return name in modules or any(name.startswith(f"{module}.") for module in modules)


def tier_of(module: str, package: str, tiers: dict[str, tuple[str, ...]]) -> str:
    """The tier holding ``module``: the one with the longest path that is ``module`` or a
    package above it."""
    relative = module.removeprefix(package).removeprefix(".")
    matches = [
        (len(path), tier)
        for tier, paths in tiers.items()
        for path in paths
        if relative == path or (path and relative.startswith(f"{path}."))
    ]
    if not matches:
        raise AssertionError(f"{module} is in no tier: add it to spikezoo._tiers.TIERS")
    return max(matches)[1]


def upward_imports(package_dir: Path, tiers: dict[str, tuple[str, ...]]) -> list[UpwardImport]:
    """Every import in the package at ``package_dir`` from a lower tier to a higher one."""
    package = package_dir.name
    files = module_names(package_dir)
    order = list(tiers)
    found = []
    for module, path in files.items():
        module_tier = tier_of(module, package, tiers)
        for line, target in imported_modules(module, path, set(files)):
            target_tier = tier_of(target, package, tiers)
            if order.index(target_tier) > order.index(module_tier):
                found.append(UpwardImport(module, line, target, module_tier, target_tier))
    return found


def test_no_import_runs_up_a_tier():
    problems = upward_imports(PACKAGE_DIR, TIERS)
    assert not problems, "\n".join(map(str, problems))


def test_weights_import_nothing_above_the_ground():
    files = module_names(PACKAGE_DIR)
    ground = [m for m in files if tier_of(m, "spikezoo", TIERS) == "ground"]
    assert "spikezoo.weights.sources" in ground
    for module in ground:
        for _, target in imported_modules(module, files[module], set(files)):
            assert tier_of(target, "spikezoo", TIERS) == "ground", (module, target)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / "toy" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root / "toy"


TOY_TIERS = {"low": ("low",), "high": ("high", "")}


def test_the_check_finds_upward_imports_however_they_are_written(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "__init__.py": "from toy import high, low\n",
            "low/__init__.py": "",
            "low/reader.py": """\
                import os

                from toy.low import relative  # the same tier


                def read():
                    from toy.high.model import Model  # a function-local import

                    return Model
                """,
            "low/relative.py": "from ..high import model\n",
            "low/dynamic.py": "import importlib\n\nimportlib.import_module('toy.high')\n",
            "high/__init__.py": "",
            "high/model.py": "from toy.low import reader\nimport toy\n\nModel = reader\n",
        },
    )
    problems = upward_imports(package, TOY_TIERS)
    assert sorted(map(str, problems)) == [
        "toy.low.dynamic:3 imports toy.high: the 'low' tier may not import from the 'high' "
        "tier above it",
        "toy.low.reader:7 imports toy.high.model: the 'low' tier may not import from the "
        "'high' tier above it",
        "toy.low.relative:1 imports toy.high.model: the 'low' tier may not import from the "
        "'high' tier above it",
    ]


def test_a_module_in_no_tier_fails(tmp_path):
    package = _write_package(tmp_path, {"__init__.py": "", "low/__init__.py": "", "extra.py": ""})
    try:
        upward_imports(package, TOY_TIERS)
    except AssertionError as error:
        assert str(error) == "toy.extra is in no tier: add it to spikezoo._tiers.TIERS"
    else:
        raise AssertionError("a module outside every tier passed")
