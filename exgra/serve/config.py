"""Settings of ``exgra serve``: where to listen, which model, and the limits on what a request may ask."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from exgra.choices import DtypeName, TemplateName
from exgra.config import Section

__all__ = ["RESEARCH_NOTICE", "ServeConfig", "torch_threads"]

RESEARCH_NOTICE = (
    "Research use only. Not a medical device: do not use its answers for diagnosis, treatment or any "
    "other clinical decision."
)


class ServeConfig(Section):
    """Everything ``exgra serve`` needs; the CLI flags map one to one onto these fields."""

    model: str = Field(description="saved model directory or a registry name (e.g. tiny)")
    served_model_name: str | None = Field(
        None, description="model id clients send (default: the model's name)"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    ui: bool = False
    image_root: Path | None = None
    allow_remote_images: bool = False
    max_request_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    max_images_per_request: int = Field(4, ge=0)
    max_tokens_limit: int = Field(1024, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(256, ge=1)
    max_batch_size: int = Field(16, ge=1, description="requests per batched generate call (1: no batching)")
    batch_window_ms: float = Field(
        10.0, ge=0, description="how long a batch waits for more requests under load"
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: see torch_threads)")
    max_queue: int = Field(256, ge=1, description="requests waiting beyond this get 503")
    # Off by default: uvicorn's line per request costs ~0.2 ms of the event loop's time per answer.
    access_log: bool = Field(False, description="log one line per HTTP request (uvicorn's access log)")
    remote_timeout_s: float = Field(10.0, gt=0)
    device: str = "auto"
    dtype: DtypeName = "auto"
    template: TemplateName | None = None


def torch_threads(config: ServeConfig, cpu_count: int | None, environ: Mapping[str, str]) -> int | None:
    """How many intra-op threads torch gets in the server; ``None``: leave torch's own setting.

    ``--threads`` wins, then ``OMP_NUM_THREADS``; otherwise one fewer than the CPUs. Torch's default
    (one per CPU) leaves no core to the event loop and the request threads (HTTP, JSON, image
    decoding): on 2 cores under load, OpenMP's threads then wait on each other at every operator and
    single requests took seconds instead of ~50 ms (bench/serve.py, docs/serving.md).
    """
    if config.threads is not None:
        return config.threads
    if environ.get("OMP_NUM_THREADS", "").strip():
        return None
    return max(1, (cpu_count or 1) - 1)
