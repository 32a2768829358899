"""Publishing every checkpoint listed in a manifest to the Hub, all or nothing.

A manifest is a TOML file::

    organisation = "spikezoo"          # Hub organisation (default "spikezoo")

    [[weights]]
    model = "sdt_8_384.in1k"           # the spikezoo model.tag the weights are for
    source = "drive:10oH_zkw..."       # a file path (relative to the manifest), a URL or drive:ID
    sha256 = "..."                     # optional: the source file's expected sha256
    top1 = 72.28                       # optional: the reported top-1 accuracy (%)
    model_args = { time_steps = 4 }    # optional: architecture arguments

Every entry is fetched, checked (sha256, reported accuracy against spikezoo's registry) and
converted before anything is uploaded; the first mismatch stops the run with nothing pushed.
Each repository then receives its files in one commit.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from spikezoo.hub.convert import convert_checkpoint
from spikezoo.hub.push import PublishError, hub_token, push_folder
from spikezoo.weights import WeightsError, download, drive_download_url, file_sha256

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["DEFAULT_ORGANISATION", "Manifest", "ManifestEntry", "publish", "read_manifest"]

#: The Hub organisation weights are published under unless a manifest or caller says otherwise.
DEFAULT_ORGANISATION = "spikezoo"

_FIELDS = {"model": str, "source": str, "sha256": str, "top1": (int, float), "model_args": dict}


@dataclass(frozen=True)
class ManifestEntry:
    """One checkpoint to publish as ``<organisation>/<model>``."""

    model: str
    source: str
    sha256: str | None = None
    top1: float | None = None
    model_args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """The organisation and the checkpoints of a manifest file (``base``: its directory)."""

    organisation: str
    entries: list[ManifestEntry]
    base: Path


def read_manifest(path: str | Path) -> Manifest:
    """Parse and check a manifest; ``ValueError`` names the entry and field that are wrong."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read the manifest {path}: {error}") from None
    entries = []
    for index, raw in enumerate(data.get("weights", [])):
        where = f"{path}: [[weights]] entry {index + 1}"
        unknown = sorted(set(raw) - set(_FIELDS))
        if unknown:
            raise ValueError(f"{where} has unknown fields {unknown}; expected {sorted(_FIELDS)}")
        for name in ("model", "source"):
            if name not in raw:
                raise ValueError(f"{where} has no {name!r}")
        for name, value in raw.items():
            if not isinstance(value, _FIELDS[name]):
                raise ValueError(f"{where}: {name} must be {_FIELDS[name]}, got {value!r}")
        entries.append(ManifestEntry(**raw))
    if not entries:
        raise ValueError(f"the manifest {path} lists no [[weights]]")
    organisation = data.get("organisation", DEFAULT_ORGANISATION)
    return Manifest(organisation, entries, path.parent)


def publish(
    manifest_path: str | Path, organisation: str | None = None, token: str | None = None
) -> list[str]:
    """Convert every entry of the manifest, then push each to ``<organisation>/<model>``.

    Returns the commit URLs. Raises :class:`PublishError` at the first entry that cannot be
    fetched, does not match its sha256 or reported accuracy, or does not convert; nothing has
    been uploaded then.
    """
    import timm

    manifest = read_manifest(manifest_path)
    organisation = organisation or manifest.organisation
    token = hub_token(token, f"{organisation}/...")
    staging = Path(tempfile.mkdtemp(prefix="spikezoo-publish-"))
    try:
        converted = []
        for entry in manifest.entries:
            registered = timm.models.get_pretrained_cfg(entry.model)
            if registered is None:
                raise PublishError(f"{entry.model}: not a spikezoo model.tag; nothing was pushed")
            reported = getattr(registered, "top1", None)
            if entry.top1 is not None and reported is not None and entry.top1 != reported:
                raise PublishError(
                    f"{entry.model}: the manifest's top1 {entry.top1} differs from the "
                    f"registry's {reported}; nothing was pushed"
                )
            source, url = _fetch(entry, manifest.base, staging)
            out = staging / entry.model
            try:
                convert_checkpoint(source, entry.model, out, entry.model_args, url)
            except (ValueError, WeightsError) as error:
                problem = " ".join(str(error).split())
                raise PublishError(f"{entry.model}: {problem}; nothing was pushed") from None
            converted.append((out, f"{organisation}/{entry.model}"))
        return [push_folder(out, repo_id, token) for out, repo_id in converted]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(entry: ManifestEntry, base: Path, staging: Path) -> tuple[Path, str | None]:
    """The entry's source as a local file checked against its sha256, and its URL if any."""
    if entry.source.startswith(("http://", "https://", "drive:")):
        url = entry.source
        if url.startswith("drive:"):
            url = drive_download_url(url.removeprefix("drive:"))
        path = staging / f"{entry.model}.download"
        try:
            download(url, path, entry.sha256)
        except WeightsError as error:
            raise PublishError(f"{entry.model}: {error}; nothing was pushed") from None
        return path, url
    path = base / entry.source
    if not path.is_file():
        raise PublishError(f"{entry.model}: source file {path} does not exist; nothing was pushed")
    if entry.sha256 and file_sha256(path) != entry.sha256.lower():
        raise PublishError(
            f"{entry.model}: {path} has sha256 {file_sha256(path)}, the manifest expects "
            f"{entry.sha256}; nothing was pushed"
        )
    return path, None
