"""The authors' own checkpoint files: where they are, and fetching one into spikezoo's cache.

A tag's pretrained cfg names its authors' file (``SpikingPretrainedCfg.authors_file``).
:func:`authors_weights` downloads it into a staging directory of the cache, checks its sha256
when one is recorded, reads it safely, and hands the state dict to a ``with`` block that loads
it into the model being built. Only when that block ends without an exception is the state
dict kept, as ``authors/<model.tag>/model.safetensors`` with its ``provenance.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor

from spikezoo.weights import cache
from spikezoo.weights.checkpoint_file import CheckpointFileError, read_checkpoint, save_state_dict
from spikezoo.weights.download import download, drive_download_url
from spikezoo.weights.errors import DownloadError

__all__ = ["AuthorsFile", "authors_weights", "drive_file_url"]


def drive_file_url(file_id: str) -> str:
    """The page of a Google Drive file, for people (downloads use the ``uc`` endpoint)."""
    return f"https://drive.google.com/file/d/{file_id}/view"


@dataclass(frozen=True)
class AuthorsFile:
    """An authors' checkpoint: a Google Drive file (``drive_id``) spikezoo can download, or
    only a ``page`` (e.g. a Drive folder) to download from by hand.

    ``sha256`` is the digest a download must have; ``None`` where nobody has recorded it yet.
    ``password`` is the extraction code a page asks for (Baidu Netdisk shares).
    """

    page: str
    drive_id: str | None = None
    sha256: str | None = None
    password: str | None = None

    def where(self) -> str:
        """Where the file is, for a person: the page, with its password if it has one."""
        return self.page + (f" (password {self.password})" if self.password else "")

    @classmethod
    def on_drive(cls, file_id: str, sha256: str | None = None) -> AuthorsFile:
        """A Google Drive file that spikezoo downloads itself."""
        return cls(page=drive_file_url(file_id), drive_id=file_id, sha256=sha256)


@contextmanager
def authors_weights(name: str, authors: AuthorsFile) -> Iterator[tuple[dict[str, Tensor], str]]:
    """Download the authors' file of ``model.tag``; yields its state dict and its URL.

    The state dict is kept in the cache (:func:`~spikezoo.weights.cache.authors_dir`) only
    when the ``with`` block ends without an exception, so weights that do not fit or give
    non-finite logits are never trusted later. Raises :class:`DownloadError` when the file
    cannot be downloaded, has another sha256 or is not a checkpoint; nothing is left behind.
    """
    if authors.drive_id is None:
        raise ValueError(
            f"the authors' file of {name} is only a page ({authors.page}), not a file to download"
        )
    url = drive_download_url(authors.drive_id)
    with cache.staging_dir() as staging:
        checkpoint = staging / f"{name}.authors-checkpoint"
        sha256 = download(url, checkpoint, authors.sha256)
        try:
            state_dict = read_checkpoint(checkpoint)
        except CheckpointFileError as error:
            raise DownloadError(f"the download of {url} {error.reason}") from None
        yield state_dict, url
        kept = staging / "authors"
        kept.mkdir()
        save_state_dict(state_dict, kept / "model.safetensors")
        record = cache.provenance(name, url, sha256, "downloaded")
        (kept / "provenance.json").write_text(json.dumps(record, indent=2) + "\n")
        cache.move_into_place(kept, cache.authors_dir(name))
