"""spikezoo's weight cache: ``spikezoo convert --install`` results and the authors' downloads.

``$SPIKEZOO_CACHE`` (default ``$XDG_CACHE_HOME/spikezoo``, else ``~/.cache/spikezoo``) holds

- ``weights/<model.tag>/``: converted model directories (``model.safetensors`` with spikezoo's
  keys, ``config.json``, ``README.md``, ``provenance.json``);
- ``authors/<model.tag>/``: the authors' file of a tag as it was downloaded, as
  ``model.safetensors`` (their keys, unwrapped from the training checkpoint) and
  ``provenance.json``.

A directory appears there only complete: it is built beside the cache in a temporary directory
and renamed into place, so a failed download or conversion leaves nothing that a later call
would trust.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spikezoo._version import __version__

__all__ = [
    "authors_dir",
    "cache_root",
    "install",
    "installed_dir",
    "move_into_place",
    "provenance",
    "staging_dir",
]


def cache_root() -> Path:
    """The root of spikezoo's cache."""
    if "SPIKEZOO_CACHE" in os.environ:
        return Path(os.environ["SPIKEZOO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spikezoo"


def installed_dir(name: str) -> Path:
    """Where the converted weights of ``model.tag`` are installed (it may not exist)."""
    return cache_root() / "weights" / name


def authors_dir(name: str) -> Path:
    """Where the downloaded authors' file of ``model.tag`` is kept (it may not exist)."""
    return cache_root() / "authors" / name


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
    """Copy a converted model directory into the cache as ``model.tag`` (replacing an older
    one)."""
    with staging_dir() as staging:
        copy = staging / "model"
        shutil.copytree(directory, copy)
        return move_into_place(copy, installed_dir(name))


def move_into_place(staged: Path, target: Path) -> Path:
    """Rename a complete directory built in a :func:`staging_dir` to ``target`` in the cache,
    replacing an older one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staged, target)
    return target


def provenance(name: str, source: str, sha256: str, step: str) -> dict[str, str]:
    """The record kept beside weights (``provenance.json``): the ``model.tag`` they are for,
    the source file's URL or path and sha256, when ``step`` (``"downloaded"``,
    ``"converted"``) happened and which spikezoo version did it."""
    return {
        "model": name,
        "source": source,
        "sha256": sha256,
        step: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "spikezoo_version": __version__,
    }
