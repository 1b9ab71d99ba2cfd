"""``exgra serve``: an OpenAI-compatible API (and, with ``--ui``, a web chat) for one exgra model."""

from __future__ import annotations

from pathlib import Path

import typer

from exgra.cli.options import Device, Dtype, Template
from exgra.errors import ExgraError


def serve(
    model: str = typer.Option(..., "--model", help="Saved model directory, or a registry name (e.g. tiny)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on."),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="Name of the environment variable that holds the API key (never the key)."
    ),
    ui: bool = typer.Option(False, "--ui", help="Also serve the web chat at /ui."),
    image_root: Path | None = typer.Option(
        None, "--image-root", help="Folder that local image paths and file:// URLs may read from."
    ),
    allow_remote_images: bool = typer.Option(
        False, "--allow-remote-images", help="Let requests name http(s) image URLs (fetched by the server)."
    ),
    served_model_name: str | None = typer.Option(
        None, "--served-model-name", help="Model id clients send (default: the model folder's name)."
    ),
    max_request_bytes: int = typer.Option(20 * 1024 * 1024, "--max-request-bytes", min=1024),
    max_image_pixels: int = typer.Option(4096 * 4096, "--max-image-pixels", min=1),
    max_images_per_request: int = typer.Option(4, "--max-images-per-request", min=0),
    max_tokens_limit: int = typer.Option(
        1024, "--max-tokens-limit", min=1, help="Largest max_tokens allowed."
    ),
    default_max_tokens: int = typer.Option(256, "--default-max-tokens", min=1),
    max_batch_size: int = typer.Option(16, "--max-batch-size", min=1, help="1 turns dynamic batching off."),
    batch_window_ms: float = typer.Option(10.0, "--batch-window-ms", min=0.0),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        help="Torch CPU threads (default: OMP_NUM_THREADS when set, else one fewer than the CPUs).",
    ),
    access_log: bool = typer.Option(
        False,
        "--access-log",
        help="Log one line per HTTP request (off by default: it costs each answer time).",
    ),
    template: Template = None,
    dtype: Dtype = "auto",
    device: Device = "auto",
) -> None:
    """Serve a model over OpenAI's /v1/chat/completions (research use only, no clinical use)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ExgraError(
            f'exgra serve needs the serve extra ({exc.name} is missing): pip install "exgra[serve]"'
        ) from exc
    from exgra.serve import ServeConfig, run_server

    config = ServeConfig(
        model=model,
        served_model_name=served_model_name,
        host=host,
        port=port,
        api_key_env=api_key_env,
        ui=ui,
        image_root=image_root,
        allow_remote_images=allow_remote_images,
        max_request_bytes=max_request_bytes,
        max_image_pixels=max_image_pixels,
        max_images_per_request=max_images_per_request,
        max_tokens_limit=max_tokens_limit,
        default_max_tokens=default_max_tokens,
        max_batch_size=max_batch_size,
        batch_window_ms=batch_window_ms,
        threads=threads,
        access_log=access_log,
        template=template,
        dtype=dtype,
        device=device,
    )
    del uvicorn
    run_server(config)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
