"""Optional dependencies: a missing one is one line naming the extra that installs it."""

import re
import sys
from pathlib import Path

import pytest

from spikezoo._optional import OPTIONAL, MissingDependencyError, optional_dependency
from spikezoo.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_extra_dependency_that_spikezoo_imports_is_known():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for extra in ("train", "analysis", "bench"):
        distributions = {re.split(r"[<>=;\[ ]", spec)[0] for spec in extras[extra]}
        known = {distribution for distribution, _ in OPTIONAL.values()}
        assert distributions <= known, extra
    for distribution, extra in OPTIONAL.values():
        assert any(spec.startswith(distribution) for spec in extras[extra]), distribution


def test_a_missing_optional_dependency_becomes_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingDependencyError) as info, optional_dependency("the digits"):
        import sklearn  # noqa: F401
    assert str(info.value) == (
        'the digits needs scikit-learn, which is not installed: pip install "spikezoo-vit[train]"'
    )
    assert (info.value.distribution, info.value.extra, info.value.name) == (
        "scikit-learn",
        "train",
        "sklearn",
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with (
        pytest.raises(MissingDependencyError, match=r"\[train\]"),
        optional_dependency("the curves", extra="train"),
    ):
        import matplotlib  # noqa: F401


def test_other_import_errors_go_on_unchanged(monkeypatch):
    monkeypatch.setitem(sys.modules, "spikezoo_missing_module", None)
    with pytest.raises(ImportError) as info, optional_dependency("nothing"):
        import spikezoo_missing_module  # noqa: F401
    assert not isinstance(info.value, MissingDependencyError)


def test_training_without_pydantic_names_the_train_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pydantic", None)
    for name in [
        m for m in sys.modules if m == "spikezoo.train" or m.startswith("spikezoo.train.")
    ]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["train", "--list"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "spikezoo train: error: spikezoo.train (training recipes) needs pydantic, which is not "
        'installed: pip install "spikezoo-vit[train]"'
    ]
