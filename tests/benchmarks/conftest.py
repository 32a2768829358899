"""The benchmark scripts import their parts (``harness``, ``whole_models``, ``peers``) from
``benchmarks/``, which is no package: the tests put it on ``sys.path`` as the scripts do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="session")
def benchmarks_path() -> Iterator[Path]:
    """``benchmarks/`` on ``sys.path`` for the session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        yield BENCHMARKS
