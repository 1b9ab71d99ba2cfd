"""Images named in a request -> PIL images, with the same confinement rules as training data.

* ``data:`` URLs (base64) are always accepted;
* local paths and ``file://`` URLs only inside ``--image-root`` (:func:`exgra.data.images.safe_image_path`
  refuses ``..``, absolute paths outside the root and symlinks that leave it);
* ``http(s)`` URLs only with ``--allow-remote-images`` (the server never fetches from arbitrary hosts
  by default);
* every image is size-checked before its pixels are decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from exgra.data.images import safe_image_path
from exgra.errors import DataError
from exgra.serve.config import ServeConfig
from exgra.serve.errors import APIError

__all__ = ["load_request_image"]


def _decode(data: bytes, config: ServeConfig, what: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > config.max_image_pixels:
                raise APIError(
                    413,
                    f"{what} has {width}x{height} pixels, more than the server's limit of "
                    f"{config.max_image_pixels} (--max-image-pixels)",
                    "messages",
                    "image_too_large",
                )
            opened.load()
            # The file's own mode: the model's image processor converts it (as for `exgra ask`).
            return opened
    except APIError:
        raise
    except Image.DecompressionBombError as exc:
        message = f"{what} has more pixels than the server decodes"
        raise APIError(413, message, "messages", "image_too_large") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise APIError(400, f"{what} is not a readable image ({type(exc).__name__})", "messages") from exc


def _data_url(url: str, config: ServeConfig) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64") or not payload:
        raise APIError(
            400, "a data: image URL must be base64 encoded (data:image/png;base64,...)", "messages"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, "the data: image URL holds invalid base64", "messages") from exc


def _local(reference: str, config: ServeConfig) -> bytes:
    if config.image_root is None:
        raise APIError(
            400,
            "local image paths are disabled on this server (start it with --image-root DIR); "
            "send the image as a data: URL",
            "messages",
            "local_images_disabled",
        )
    root = Path(config.image_root)
    relative = reference
    if os.path.isabs(reference):
        # Absolute paths are allowed only when they lie inside the root; safe_image_path then checks
        # the resolved path, so ".." and symlinks leaving the root are refused the same way.
        relative = os.path.relpath(reference, root.resolve())
        if relative.startswith(".."):
            relative = os.path.relpath(reference, root)
    try:
        path = safe_image_path(root, relative)
    except DataError as exc:
        raise APIError(
            400,
            f"image path '{reference}' is outside the server's image root",
            "messages",
            "image_path_outside_root",
        ) from exc
    if not path.is_file():
        raise APIError(400, f"image not found under the image root: '{reference}'", "messages")
    if path.stat().st_size > config.max_request_bytes:
        raise APIError(
            413, f"image '{reference}' is larger than {config.max_request_bytes} bytes", "messages"
        )
    return path.read_bytes()


def _remote(url: str, config: ServeConfig) -> bytes:
    if not config.allow_remote_images:
        raise APIError(
            400,
            "remote image URLs are refused by this server (start it with --allow-remote-images); "
            "send the image as a data: URL",
            "messages",
            "remote_images_disabled",
        )
    request = urllib.request.Request(url, headers={"User-Agent": "exgra-serve"})
    try:
        with urllib.request.urlopen(request, timeout=config.remote_timeout_s) as response:  # noqa: S310
            data = response.read(config.max_request_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise APIError(400, f"could not fetch the image URL ({type(exc).__name__})", "messages") from exc
    if len(data) > config.max_request_bytes:
        raise APIError(413, f"the remote image is larger than {config.max_request_bytes} bytes", "messages")
    return data


def load_request_image(url: str, config: ServeConfig) -> Image.Image:
    """The image an ``image_url`` names, in its own mode (the model's processor makes it RGB).

    :class:`APIError` (400 or 413) for anything refused.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
    if scheme == "data":
        return _decode(_data_url(url, config), config, "the data: image")
    if scheme in ("http", "https"):
        return _decode(_remote(url, config), config, "the remote image")
    if scheme == "file":
        parsed = urllib.parse.urlsplit(url)
        if parsed.netloc not in ("", "localhost"):
            raise APIError(400, "file:// image URLs must name a local file", "messages")
        return _decode(_local(urllib.parse.unquote(parsed.path), config), config, f"image '{url}'")
    if scheme:
        raise APIError(
            400, f"unsupported image URL scheme '{scheme}'; use data:, file:// or a path", "messages"
        )
    return _decode(_local(url, config), config, f"image '{url}'")
