"""The web chat (``--ui``): one static page on the same app, talking to ``/v1/chat/completions``.

Gradio was the plan (LLaVA and LLaVA-Med ship it), but every gradio release that fits the rest of our
stack pins ``pillow<13`` and would downgrade the installed Pillow; a plain page served by FastAPI does
the job with no extra dependency: image upload (sent as a ``data:`` URL), multi-turn chat, streamed
text, example images from the demo set, the research-use banner and readable errors.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from functools import lru_cache
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from exgra.serve.config import RESEARCH_NOTICE, ServeConfig

__all__ = ["example_images", "mount_ui"]

logger = logging.getLogger("exgra.serve")

_EXAMPLES = ("chest_xray", "head_ct", "retina", "pathology_ihc", "brain_mri_axial_10")
_EXAMPLE_SIDE = 256


@lru_cache(maxsize=1)
def example_images() -> list[dict[str, str]]:
    """A few demo-set images (real, permissively licensed, from installed packages) as data URLs.

    Empty when the demo packages (``exgra[demo]``) are not installed: the page then offers upload only.
    """
    try:
        from exgra.data.demo_sources import check_demo_packages, demo_sources
        from exgra.data.images import array_to_rgb

        check_demo_packages()
        sources = demo_sources()
    except Exception as exc:  # optional extra; the page works without examples
        logger.info("no example images: %s", exc)
        return []
    chosen = [s for s in sources if s.name in _EXAMPLES] or sources[:4]
    examples = []
    for source in chosen[:4]:
        try:
            image = array_to_rgb(source.load())
        except Exception as exc:
            logger.info("example %s skipped: %s", source.name, exc)
            continue
        image.thumbnail((_EXAMPLE_SIDE, _EXAMPLE_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        label = f"{source.modality} ({source.region})" if source.region else source.modality
        examples.append({"name": source.name, "label": label, "licence": source.licence, "url": url})
    return examples


def _page(model_name: str) -> str:
    template = resources.files("exgra.serve").joinpath("static/chat.html").read_text(encoding="utf-8")
    page = template.replace("{{MODEL_JSON}}", json.dumps(model_name).replace("<", "\\u003c"))
    return page.replace("{{NOTICE}}", html.escape(RESEARCH_NOTICE)).replace(
        "{{MODEL}}", html.escape(model_name)
    )


def mount_ui(app: FastAPI, config: ServeConfig) -> None:
    """Add ``/`` (redirect), ``/ui`` (the page) and ``/ui/examples`` to ``app``."""

    @app.get("/", include_in_schema=False)
    async def _root() -> RedirectResponse:
        return RedirectResponse("/ui")

    @app.get("/ui", include_in_schema=False)
    async def _ui() -> HTMLResponse:
        return HTMLResponse(_page(app.state.engine.model_name))

    @app.get("/ui/examples", include_in_schema=False)
    async def _examples() -> JSONResponse:
        import asyncio

        examples: list[dict[str, Any]] = await asyncio.to_thread(example_images)
        return JSONResponse(examples)
