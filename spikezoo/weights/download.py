"""Downloading a file over HTTP(S), including Google Drive's large-file confirmation page.

Drive answers a download request for a large file with an HTML page ("can't scan this file
for viruses") holding a form or link that carries a confirmation token; the downloader follows
it once. ``SPIKEZOO_DRIVE_ENDPOINT`` replaces ``https://drive.google.com`` (tests serve Drive
from 127.0.0.1). gdown is not used: it recognises the confirmation page only on Google's own
hosts, so its path could not be tested offline.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from tqdm.auto import tqdm

from spikezoo.weights.errors import DownloadError

__all__ = ["DRIVE_ENDPOINT", "TIMEOUT_S", "download", "drive_download_url"]

#: Default Google Drive endpoint (``SPIKEZOO_DRIVE_ENDPOINT`` overrides it).
DRIVE_ENDPOINT = "https://drive.google.com"
#: Seconds a connection or a read may stall before the download fails.
TIMEOUT_S = 10.0
_CHUNK = 1 << 20


def drive_download_url(file_id: str) -> str:
    """The direct-download URL of a Drive file."""
    endpoint = os.environ.get("SPIKEZOO_DRIVE_ENDPOINT", DRIVE_ENDPOINT).rstrip("/")
    return f"{endpoint}/uc?{urlencode(dict(export='download', id=file_id))}"


def download(url: str, destination: Path, expected_sha256: str | None = None) -> str:
    """Download ``url`` to ``destination`` with a progress bar; returns the file's sha256.

    Follows one Drive confirmation page. Raises :class:`DownloadError` when the server cannot
    be reached, answers with an error or an HTML page instead of the file, the transfer ends
    early, or the sha256 differs from ``expected_sha256``; ``destination`` is then removed.
    """
    try:
        response = _open(url)
        if _is_html(response):
            page = response.read(2_000_000).decode("utf-8", "replace")
            response.close()
            confirmed = confirmation_url(page, response.url)
            if confirmed is None:
                raise DownloadError(
                    f"{url} returned an HTML page instead of the file (Drive shows one when the "
                    "file is private, removed or over its download quota); download it in a "
                    "browser"
                )
            response = _open(confirmed)
            if _is_html(response):
                raise DownloadError(
                    f"{url} returned an HTML page instead of the file after the confirmation "
                    "step; download it in a browser"
                )
        digest = _save(response, url, destination)
    except BaseException:
        destination.unlink(missing_ok=True)
        raise
    if expected_sha256 and digest != expected_sha256.lower():
        destination.unlink()
        raise DownloadError(
            f"{url}: sha256 {digest} differs from the expected {expected_sha256} (a different "
            "or corrupted file); nothing was kept"
        )
    return digest


def _open(url: str):
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"cannot download {url!r}: only http(s) URLs are supported")
    request = urllib.request.Request(url, headers={"User-Agent": "spikezoo"})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url} answered HTTP {error.code} ({error.reason})") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"cannot reach {urlsplit(url).netloc} ({reason})") from None


def _is_html(response) -> bool:
    return response.headers.get_content_type() == "text/html"


def _save(response, url: str, destination: Path) -> str:
    total = response.headers.get("Content-Length")
    total = int(total) if total and total.isdigit() else None
    sha256 = hashlib.sha256()
    received = 0
    name = destination.name
    with (
        response,
        destination.open("wb") as file,
        tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}") as bar,
    ):
        try:
            while chunk := response.read(_CHUNK):
                file.write(chunk)
                sha256.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, ValueError) as error:  # http.client.IncompleteRead is a ValueError
            raise DownloadError(
                f"the download of {url} broke off after {received} bytes ({error}); try again"
            ) from None
    if total is not None and received != total:
        raise DownloadError(
            f"the download of {url} is truncated: {received} of {total} bytes; try again"
        )
    return sha256.hexdigest()


class _ConfirmationPage(HTMLParser):
    """Collects Drive's ``download-form`` (action and hidden fields) and ``uc?export`` links."""

    def __init__(self) -> None:
        super().__init__()
        self.form_action: str | None = None
        self.fields: dict[str, str] = {}
        self.link: str | None = None
        self._in_form = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form" and attributes.get("id") == "download-form":
            self.form_action, self._in_form = attributes.get("action"), True
        elif tag == "input" and self._in_form and attributes.get("type") == "hidden":
            self.fields[attributes.get("name", "")] = attributes.get("value", "")
        elif tag == "a" and "export=download" in attributes.get("href", "") and not self.link:
            self.link = attributes["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False


def confirmation_url(page: str, page_url: str) -> str | None:
    """The download URL on a Drive confirmation page (form or link), or ``None``."""
    parser = _ConfirmationPage()
    parser.feed(page)
    if parser.form_action:
        parts = urlsplit(urljoin(page_url, parser.form_action))
        return urlunsplit(parts._replace(query=urlencode(parser.fields)))
    if parser.link:
        return urljoin(page_url, parser.link)
    return None
