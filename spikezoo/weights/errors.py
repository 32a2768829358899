"""The errors of finding and downloading weights: each message is one line."""

from __future__ import annotations

__all__ = ["DownloadError", "WeightsError", "WeightsNotFoundError"]


class WeightsError(RuntimeError):
    """Base of the errors of weights that cannot be found, fetched or published."""


class WeightsNotFoundError(WeightsError):
    """``pretrained=True`` found no weights: the message says which sources exist for the tag,
    where the authors' file is, and the ``spikezoo convert`` command for a file downloaded by
    hand."""


class DownloadError(WeightsError):
    """A download that failed or brought something other than the expected file (an HTML page,
    a truncated or corrupted file, a different sha256)."""
