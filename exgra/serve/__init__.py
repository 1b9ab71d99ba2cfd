"""``exgra serve``: an OpenAI-compatible chat-completions server for any exgra model.

* :mod:`exgra.serve.app` — the FastAPI app (routes, auth, streaming);
* :mod:`exgra.serve.schemas`, :mod:`exgra.serve.errors` — OpenAI request/response and error schemas;
* :mod:`exgra.serve.engine` — the one model in memory, messages -> the model's own prompt;
* :mod:`exgra.serve.batching` — dynamic batching in front of the generation path ``exgra eval`` uses;
* :mod:`exgra.serve.images` — image URLs -> images under the same confinement rules as training data;
* :mod:`exgra.serve.ui` — the optional web chat on the same app.

Serve imports eval and models, never training. FastAPI and uvicorn come with ``exgra[serve]``.
"""

from __future__ import annotations

from exgra.serve.config import RESEARCH_NOTICE, ServeConfig

__all__ = ["RESEARCH_NOTICE", "ServeConfig", "create_app", "run_server"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003 - a lazy import keeps fastapi optional
    """See :func:`exgra.serve.app.create_app`."""
    from exgra.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)


def run_server(config: ServeConfig) -> None:
    """Check the model reference, build the app and run uvicorn until interrupted.

    A model that fails to load stops the server with one clear error (exit 1), rather than leaving
    a server that answers 503 forever.
    """
    import logging
    import threading
    from pathlib import Path

    import uvicorn

    from exgra.errors import ExgraError

    if not Path(config.model).is_dir():
        from exgra.models import get_model_spec

        if Path(config.model).exists() or "/" in config.model:
            raise ExgraError(f"model directory not found: {config.model}")
        get_model_spec(config.model)
    elif not (Path(config.model) / "config.json").is_file():
        raise ExgraError(f"{config.model} has no config.json; it is not a saved model directory")
    if config.image_root is not None and not Path(config.image_root).is_dir():
        raise ExgraError(f"--image-root {config.image_root} is not a folder")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _set_torch_threads(config)
    app = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=config.host, port=config.port, log_level="info", access_log=config.access_log
        )
    )
    engine = app.state.engine

    def watch_loading() -> None:
        while not engine.ready and engine.load_error is None:
            threading.Event().wait(0.2)
        if engine.load_error is not None:
            server.should_exit = True
        else:
            where = f"http://{config.host}:{config.port}"
            ui = f", web chat at {where}/ui" if config.ui else ""
            logging.getLogger("exgra.serve").info("serving %s at %s/v1%s", engine.model_name, where, ui)

    threading.Thread(target=watch_loading, daemon=True).start()
    server.run()
    if engine.load_error is not None:
        raise ExgraError(f"the model failed to load: {engine.load_error}")


def _set_torch_threads(config: ServeConfig) -> None:
    import os

    import torch

    from exgra.serve.config import torch_threads

    threads = torch_threads(config, os.cpu_count(), os.environ)
    if threads is not None:
        torch.set_num_threads(threads)
