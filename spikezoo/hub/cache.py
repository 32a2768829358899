"""spikezoo's weight cache: converted authors' weights and ``spikezoo convert --install``.

``$SPIKEZOO_CACHE`` (default ``$XDG_CACHE_HOME/spikezoo``, else ``~/.cache/spikezoo``) holds
``weights/<model.tag>/`` with ``model.safetensors``, ``config.json``, ``README.md`` and
``provenance.json``. A directory appears there only complete: it is built beside the cache in a
temporary directory and renamed into place, so a failed download or conversion leaves nothing
that a later call would trust.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["cache_root", "install", "installed_dir", "staging_dir"]


def cache_root() -> Path:
    """The root of spikezoo's cache."""
    if "SPIKEZOO_CACHE" in os.environ:
        return Path(os.environ["SPIKEZOO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spikezoo"


def installed_dir(name: str) -> Path:
    """Where the weights of ``model.tag`` are installed (it may not exist)."""
    return cache_root() / "weights" / name


@contextmanager
def staging_dir() -> Iterator[Path]:
    """A temporary directory inside the cache (same file system, so it can be renamed into
    place), removed on exit."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="staging-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def install(directory: Path, name: str) -> Path:
    """Put a converted model directory in the cache as ``model.tag`` (replacing an older one)."""
    target = installed_dir(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir() as staging:
        copy = staging / "model"
        shutil.copytree(directory, copy)
        if target.exists():
            shutil.rmtree(target)
        os.replace(copy, target)
    return target
