"""A Hugging Face Hub and a Google Drive played by HTTP servers on 127.0.0.1.

The real huggingface_hub code talks to the fake Hub (``HF_ENDPOINT``): file resolution with
its headers (``X-Repo-Commit``, ``ETag``, sizes, ``X-Error-Code`` for 404s), revisions (a
branch name or a commit sha), repository creation, ``preupload``, the LFS batch API and basic
PUT transfers, and ndjson commits. Xet is switched off (``HF_HUB_DISABLE_XET=1``; hf_xet is
not installed either), so large files travel over LFS. The fake Drive answers
``/uc?export=download&id=...`` with the large-file confirmation page (a ``download-form``),
then the file. Both bind port 0 on 127.0.0.1 only, time out idle connections and are shut
down by their fixtures.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.hub.hub_helpers import point_hub_at


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.requests: list[tuple[str, str]] = []
        # A short poll lets shutdown() return at once instead of after half a second.
        self.thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # an idle connection is closed
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status, body=b"", headers=None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, status=200, headers=None):
        self._send(status, json.dumps(payload).encode(), headers)


class FakeHub(_Server):
    """``repos[repo_id]`` is a list of commits ``(sha, {path: bytes})``, the last one is main."""

    def __init__(self):
        self.repos: dict[str, list[tuple[str, dict[str, bytes]]]] = {}
        self.lfs: dict[str, bytes] = {}
        super().__init__(_HubHandler)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commits = self.repos[repo_id]
        if revision == "main":
            return commits[-1][1]
        return next(files for sha, files in commits if sha == revision)

    def commit(self, repo_id: str, files: dict[str, bytes]) -> str:
        previous = self.repos[repo_id][-1][1] if self.repos.get(repo_id) else {}
        new = dict(previous, **files)
        digests = sorted((k, hashlib.sha256(v).hexdigest()) for k, v in new.items())
        history = len(self.repos.get(repo_id, []))
        sha = hashlib.sha1(f"{repo_id}:{history}:{digests}".encode()).hexdigest()
        self.repos.setdefault(repo_id, []).append((sha, new))
        return sha


class _HubHandler(_Handler):
    server: FakeHub

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self.server.requests.append((self.command, self.path))
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urlsplit(self.path).path)
        if not match:
            return self._json({"error": "not found"}, 404)
        repo_id, revision, filename = match.groups()
        if repo_id not in self.server.repos:
            return self._json(
                {"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"}
            )
        try:
            files = self.server.files(repo_id, revision)
        except StopIteration:
            return self._json({"error": "Invalid rev"}, 404, {"X-Error-Code": "RevisionNotFound"})
        sha = next(s for s, f in self.server.repos[repo_id] if f is files)
        if filename not in files:
            return self._json(
                {"error": "Entry not found"},
                404,
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha},
            )
        content = files[filename]
        etag = f'"{hashlib.sha256(content).hexdigest()}"'
        self._send(200, content, {"X-Repo-Commit": sha, "ETag": etag}, "application/octet-stream")

    def do_PUT(self):
        self.server.requests.append((self.command, self.path))
        oid = self.path.rsplit("/", 1)[-1]
        body = self._body()
        if hashlib.sha256(body).hexdigest() != oid:
            return self._json({"error": "sha256 mismatch"}, 400)
        self.server.lfs[oid] = body
        self._json({})

    def do_POST(self):
        self.server.requests.append((self.command, self.path))
        body = self._body()
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            return self._json({"error": "Invalid credentials"}, 401)
        path = urlsplit(self.path).path
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            self.server.repos.setdefault(repo_id, [])
            return self._json({"url": f"{self.server.url}/{repo_id}"})
        if path == "/api/validate-yaml":  # the model card's front matter
            front_matter = json.loads(body)["content"].split("---")[1]
            errors = [] if "library_name: timm" in front_matter else [dict(message="no library")]
            return self._json({"errors": errors, "warnings": []}, 400 if errors else 200)
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/[^/]+", path):
            files = json.loads(body)["files"]
            modes = [
                dict(
                    path=f["path"],
                    uploadMode="lfs" if f["path"].endswith(".safetensors") else "regular",
                    shouldIgnore=False,
                )
                for f in files
            ]
            return self._json({"files": modes})
        if match := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            objects = json.loads(body)["objects"]
            actions = [
                dict(
                    oid=o["oid"],
                    size=o["size"],
                    actions=dict(upload=dict(href=f"{self.server.url}/lfs-upload/{o['oid']}")),
                )
                for o in objects
            ]
            return self._json({"transfer": "basic", "objects": actions})
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
            repo_id = match[1]
            if repo_id not in self.server.repos:
                return self._json(
                    {"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"}
                )
            files = {}
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "lfsFile":
                    files[item["value"]["path"]] = self.server.lfs[item["value"]["oid"]]
            sha = self.server.commit(repo_id, files)
            return self._json(
                {
                    "commitUrl": f"{self.server.url}/{repo_id}/commit/{sha}",
                    "commitOid": sha,
                    "pullRequestUrl": None,
                }
            )
        self._json({"error": "not found"}, 404)


class FakeDrive(_Server):
    """``files[id]`` is served; ``mode`` breaks it: ``"html"`` (only an HTML page),
    ``"truncate"`` (the transfer stops halfway)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode = "ok"
        super().__init__(_DriveHandler)


_CONFIRMATION_PAGE = """<!DOCTYPE html><html>
<head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="{action}" method="get">
<input type="submit" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="1234">
</form></body></html>"""


class _DriveHandler(_Handler):
    server: FakeDrive

    def do_GET(self):
        self.server.requests.append((self.command, self.path))
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        content = self.server.files.get(query.get("id", ""))
        if content is None:
            return self._send(404, b"<html>Not found</html>", content_type="text/html")
        if self.server.mode == "html" or (parts.path == "/uc" and "confirm" not in query):
            page = "<!DOCTYPE html><html><body>Quota exceeded</body></html>"
            if self.server.mode != "html":
                page = _CONFIRMATION_PAGE.format(
                    action=f"{self.server.url}/download", id=query["id"]
                )
            return self._send(200, page.encode(), content_type="text/html; charset=utf-8")
        if parts.path == "/download" and query.get("confirm") == "t":
            headers = {"Content-Disposition": 'attachment; filename="checkpoint.pth"'}
            if self.server.mode == "truncate":
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(content)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(content[: len(content) // 2])
                self.close_connection = True
                return None
            return self._send(200, content, headers, "application/octet-stream")
        return self._send(400, b"<html>Bad request</html>", content_type="text/html")


@pytest.fixture
def fake_hub():
    with FakeHub() as hub:
        yield hub


@pytest.fixture
def fake_drive():
    with FakeDrive() as drive:
        yield drive


@pytest.fixture
def weights_env(monkeypatch, tmp_path, fake_hub, fake_drive):
    """Hub, Drive and both caches for one test, all local."""
    point_hub_at(monkeypatch, fake_hub.url, tmp_path)
    monkeypatch.setenv("SPIKEZOO_CACHE", str(tmp_path / "spikezoo"))
    monkeypatch.setenv("SPIKEZOO_DRIVE_ENDPOINT", fake_drive.url)
    return fake_hub, fake_drive
