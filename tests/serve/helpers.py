"""A real ``exgra serve`` subprocess on 127.0.0.1 and small HTTP helpers (stdlib only)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def data_url(image: Image.Image | Path, image_format: str = "PNG") -> str:
    """A file's bytes (or a PIL image saved as PNG) as a base64 ``data:`` URL."""
    if isinstance(image, Path):
        payload = image.read_bytes()
        mime = "image/png" if image.suffix.lower() == ".png" else "image/jpeg"
    else:
        buffer = io.BytesIO()
        image.save(buffer, format=image_format)
        payload, mime = buffer.getvalue(), f"image/{image_format.lower()}"
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


@dataclass
class HttpResult:
    status: int
    body: Any
    text: str


def http(
    url: str, method: str = "GET", body: bytes | str | None = None, headers: dict[str, str] | None = None
) -> HttpResult:
    """One HTTP request; 4xx/5xx are returned, not raised."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        parsed = None
    return HttpResult(status, parsed, text)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def api(self) -> str:
        return f"{self.url}/v1"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def running_server(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``python -m exgra serve ARGS --port <free>`` and wait until /health says ok."""
    port = free_port()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "exgra", "serve", *args, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            if not server.alive():
                raise RuntimeError(f"exgra serve exited early:\n{server.log()}")
            with contextlib.suppress(OSError):
                if http(f"{server.url}/health").status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"exgra serve did not become ready:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
