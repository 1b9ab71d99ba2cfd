"""A stand-in Hugging Face hub on 127.0.0.1 for download tests (ENVIRONMENT.md "Local stand-in hub").

Serves what ``huggingface_hub.snapshot_download`` 2.x calls:
``GET /api/{models|datasets}/{repo}/revision/{rev}``, ``GET /api/{...}/{repo}/tree/{sha}`` and
``HEAD/GET /[datasets/]{repo}/resolve/{sha}/{file}`` with ``ETag``, ``X-Repo-Commit`` and ``Range``.
``drop_once`` names files whose first GET is cut off after ``drop_after`` bytes (a dropped connection);
files in ``drop_always`` are cut on every GET. Files in ``stall`` send their first 1000 bytes, set
``stalled`` and then hang until the server stops (a huge file in flight, for Ctrl-C tests).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

_API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/(revision|tree)/([^/]+)(?:/.*)?$")
_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class StandInHub:
    def __init__(self) -> None:
        # (repo_type, repo_id) -> {"sha": str, "files": {path: bytes}}
        self.repos: dict[tuple[str, str], dict] = {}
        self.drop_once: set[str] = set()
        self.drop_always: set[str] = set()
        self.drop_after = 1000
        self.stall: set[str] = set()
        self.stalled = threading.Event()
        self._stopping = threading.Event()
        self.range_requests: list[str] = []
        self.file_gets: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> str:
        sha = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[(repo_type, repo_id)] = {"sha": sha, "files": files}
        return sha

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StandInHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, value: object, status: int = 200, headers: dict | None = None) -> None:
                body = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, item in (headers or {}).items():
                    self.send_header(key, item)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _not_found(self, code: str) -> None:
                self._json({"error": code}, 404, {"X-Error-Code": code, "X-Error-Message": code})

            def _repo(self, repo_type: str, repo_id: str, revision: str) -> dict | None:
                repo = hub.repos.get((repo_type, repo_id))
                if repo is None:
                    self._not_found("RepoNotFound")
                    return None
                if revision not in ("main", repo["sha"]):
                    self._not_found("RevisionNotFound")
                    return None
                return repo

            def _handle(self) -> None:
                path = unquote(urlparse(self.path).path)
                api = _API.match(path)
                if api:
                    kind, repo_id, action, revision = api.groups()
                    repo = self._repo(kind[:-1], repo_id, revision)
                    if repo is None:
                        return
                    if action == "revision":
                        siblings = [{"rfilename": name} for name in repo["files"]]
                        self._json({"id": repo_id, "sha": repo["sha"], "siblings": siblings})
                    else:
                        tree = [
                            {
                                "type": "file",
                                "path": name,
                                "size": len(data),
                                "oid": hashlib.sha1(data).hexdigest(),
                            }
                            for name, data in repo["files"].items()
                        ]
                        self._json(tree)
                    return
                resolve = _RESOLVE.match(path)
                if not resolve:
                    self._not_found("EntryNotFound")
                    return
                dataset, repo_id, revision, filename = resolve.groups()
                repo = self._repo("dataset" if dataset else "model", repo_id, revision)
                if repo is None:
                    return
                data = repo["files"].get(filename)
                if data is None:
                    self._not_found("EntryNotFound")
                    return
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                start = 0
                range_header = self.headers.get("Range")
                if range_header and self.command == "GET":
                    hub.range_requests.append(f"{filename} {range_header}")
                    start = int(re.match(r"bytes=(\d+)-", range_header).group(1))
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("ETag", etag)
                self.send_header("X-Repo-Commit", repo["sha"])
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.command == "HEAD":
                    return
                hub.file_gets.append(filename)
                if filename in hub.stall:
                    self.wfile.write(body[:1000])
                    self.wfile.flush()
                    hub.stalled.set()
                    hub._stopping.wait()
                    return
                if filename in hub.drop_always or filename in hub.drop_once:
                    hub.drop_once.discard(filename)
                    # a resumed request is cut too (half way), so drop_always never completes
                    self.wfile.write(body[: hub.drop_after if start == 0 else len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection dies mid-file
                    return
                self.wfile.write(body)

            do_GET = _handle
            do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> StandInHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
