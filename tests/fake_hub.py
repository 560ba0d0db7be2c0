"""A fake Hugging Face Hub on 127.0.0.1, for push and download tests that must not leave the machine.

It answers what huggingface_hub (2.x) calls for `create_repo`, `upload_folder` and `snapshot_download`:

    POST /api/repos/create                               create a model repository
    POST /api/validate-yaml                              README.md metadata check before an upload
    POST /api/models/{repo}/preupload/{rev}              every file is "regular", so no LFS or Xet transfer
    POST /api/models/{repo}/commit/{rev}                 NDJSON: a header, then files as base64
    GET  /api/models/{repo}[/revision/{rev}]             repo info: head commit and files (siblings)
    GET  /api/models/{repo}/tree/{rev}                   file listing (one page)
    HEAD|GET /{repo}/resolve/{rev}/{path}                file bytes with ETag, X-Repo-Commit, Content-Length

    GET  /api/agent-harnesses                            public: the client's user-agent registry (served empty)

Every other request must carry `Authorization: Bearer <one of tokens>`, else 401 as the Hub answers a bad token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"
REV = r"(?P<rev>[^/]+)"


@dataclass
class Repo:
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> files at that commit
    head: str | None = None

    @property
    def files(self) -> dict[str, bytes]:
        return self.commits[self.head] if self.head else {}


@dataclass
class SeenRequest:
    method: str
    path: str
    authorization: str | None
    body: bytes


def blob_id(content: bytes) -> str:
    """Git's blob hash, which the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    def __init__(self, tokens: set[str]):
        self.tokens = tokens
        self.repos: dict[str, Repo] = {}
        self.requests: list[SeenRequest] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's client expects
    hub: FakeHub

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        authorization = self.headers.get("Authorization")
        with self.hub.lock:
            self.hub.requests.append(SeenRequest(method, path, authorization, body))
        if path == "/api/agent-harnesses":
            return self._send(200, {"standardEnvVars": [], "harnesses": {}})
        if authorization not in {f"Bearer {token}" for token in self.hub.tokens}:
            message = "Invalid credentials in Authorization header"
            return self._send(401, {"error": message}, {"X-Error-Message": message})
        for route_method, pattern, handle in ROUTES:
            if method in route_method and (match := re.fullmatch(pattern, path)):
                with self.hub.lock:
                    return handle(self, method, body, **match.groupdict())
        self._send(404, {"error": f"fake hub: no route for {method} {path}"})

    def _send(self, status: int, payload, headers: dict[str, str] | None = None, method: str = "GET") -> None:
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(content)

    def _repo(self, repo: str) -> Repo | None:
        found = self.hub.repos.get(repo)
        if found is None:
            self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return found

    def _commit(self, repo: Repo, rev: str | None) -> str | None:
        sha = repo.head if rev in (None, "main") else rev
        if sha not in repo.commits:
            self._send(404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
            return None
        return sha

    # ---- routes ----

    def create_repo(self, method, body, **_):
        request = json.loads(body)
        repo_id = f"{request.get('organization') or 'fake-user'}/{request['name']}"
        if repo_id in self.hub.repos:
            return self._send(
                409, {"error": "You already created this model repo", "url": f"{self.hub.endpoint}/{repo_id}"}
            )
        # huggingface_hub sends "visibility" (2.x) or "private" (1.x): the Hub takes either.
        self.hub.repos[repo_id] = Repo(
            private=request.get("visibility") == "private" or request.get("private") is True
        )
        self._send(200, {"url": f"{self.hub.endpoint}/{repo_id}", "name": repo_id})

    def validate_yaml(self, method, body, **_):
        self._send(200, {"errors": [], "warnings": []})

    def preupload(self, method, body, repo, rev):
        if self._repo(repo) is None:
            return
        files = json.loads(body)["files"]
        self._send(
            200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        )

    def commit(self, method, body, repo, rev):
        found = self._repo(repo)
        if found is None:
            return
        files = dict(found.files)
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                files.pop(item["value"]["path"], None)
            elif item["key"] != "header":
                return self._send(
                    400, {"error": f"fake hub: {item['key']} is not supported (all uploads are regular)"}
                )
        sha = hashlib.sha1(json.dumps([found.head, sorted((p, blob_id(c)) for p, c in files.items())]).encode())
        found.commits[sha.hexdigest()] = files
        found.head = sha.hexdigest()
        url = f"{self.hub.endpoint}/{repo}/commit/{found.head}"
        self._send(200, {"success": True, "commitOid": found.head, "commitUrl": url})

    def model_info(self, method, body, repo, rev=None):
        found = self._repo(repo)
        if found is None or (sha := self._commit(found, rev)) is None:
            return
        siblings = [{"rfilename": path} for path in found.commits[sha]]
        self._send(200, {"id": repo, "sha": sha, "private": found.private, "siblings": siblings})

    def tree(self, method, body, repo, rev):
        found = self._repo(repo)
        if found is None or (sha := self._commit(found, rev)) is None:
            return
        entries = [
            {"type": "file", "path": path, "size": len(content), "oid": blob_id(content)}
            for path, content in sorted(found.commits[sha].items())
        ]
        self._send(200, entries)

    def resolve(self, method, body, repo, rev, path):
        found = self._repo(repo)
        if found is None or (sha := self._commit(found, rev)) is None:
            return
        content = found.commits[sha].get(path)
        if content is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}
            return self._send(404, {"error": "Entry not found"}, headers, method)
        self._send(200, content, {"ETag": f'"{blob_id(content)}"', "X-Repo-Commit": sha}, method)


ROUTES = [
    (("POST",), r"/api/repos/create", _Handler.create_repo),
    (("POST",), r"/api/validate-yaml", _Handler.validate_yaml),
    (("POST",), rf"/api/models/{REPO}/preupload/{REV}", _Handler.preupload),
    (("POST",), rf"/api/models/{REPO}/commit/{REV}", _Handler.commit),
    (("GET",), rf"/api/models/{REPO}/tree/{REV}", _Handler.tree),
    (("GET",), rf"/api/models/{REPO}/revision/{REV}", _Handler.model_info),
    (("GET",), rf"/api/models/{REPO}", _Handler.model_info),
    (("GET", "HEAD"), rf"/{REPO}/resolve/{REV}/(?P<path>.+)", _Handler.resolve),
]
