"""The FastAPI app: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health`` and the optional
web chat, all in front of one :class:`~exgra.serve.engine.ServeEngine`.
"""

from __future__ import annotations

import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from exgra.serve.config import RESEARCH_NOTICE, ServeConfig
from exgra.serve.engine import ServeEngine, load_served_model
from exgra.serve.errors import APIError, error_body, install_error_handlers
from exgra.serve.schemas import ChatCompletionRequest, chunk_body, completion_body

__all__ = ["create_app"]


def _api_key(config: ServeConfig) -> str | None:
    if not config.api_key_env:
        return None
    key = os.environ.get(config.api_key_env, "")
    if not key:
        from exgra.errors import ConfigError

        raise ConfigError(
            f"--api-key-env {config.api_key_env}: that environment variable is not set or empty"
        )
    return key


class _RequireKey:
    """401 for ``/v1/`` requests without ``Authorization: Bearer <key>``; ``/health`` and ``/ui`` stay open.

    A plain ASGI middleware: starlette's ``@app.middleware("http")`` wraps every request in extra tasks
    and streams (~0.3 ms each on this CPU), a cost every answer paid even when no key was set.
    """

    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key):
                message = "missing API key" if not header else "invalid API key"
                response = APIError(
                    401, f"{message}; send it as 'Authorization: Bearer <key>'", code="invalid_api_key"
                ).response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 once it passes ``limit`` bytes.

    An oversized body is still read (and dropped) up to twice the limit before answering, so an
    ordinary client that sends its whole body first gets the 413 instead of a reset connection.
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 2 * limit:
            break
    if size > limit:
        raise APIError(
            413, f"the request body is larger than this server's limit of {limit} bytes (--max-request-bytes)"
        )
    return b"".join(chunks)


def _parse_request(body: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        raise APIError(422, f"{location}: {first['msg']}", location or None) from exc


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def create_app(config: ServeConfig, loader: Callable[[ServeConfig], Any] = load_served_model) -> FastAPI:
    """The whole server for ``config``; the model loads in the background when the app starts."""
    api_key = _api_key(config)
    engine = ServeEngine(config, loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        yield
        engine.close()

    app = FastAPI(
        title="exgra serve", description=RESEARCH_NOTICE, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.engine = engine
    install_error_handlers(app)

    if api_key is not None:
        app.add_middleware(_RequireKey, key=api_key)

    @app.get("/health")
    async def health() -> JSONResponse:
        if engine.load_error is not None:
            return JSONResponse({"status": "error", "detail": engine.load_error}, status_code=503)
        if not engine.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        queue = engine.queue
        sizes = queue.batch_sizes if queue is not None else []
        return JSONResponse(
            {
                "status": "ok",
                "torch_threads": torch.get_num_threads(),
                "model": engine.model_name,
                "waiting": len(queue) if queue is not None else 0,
                "batches": len(sizes),
                "largest_batch": max(sizes, default=0),
                "recent_batch_sizes": list(sizes)[-32:],
            }
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        generator = engine.generator
        return {
            "object": "list",
            "data": [
                {
                    "id": engine.model_name,
                    "object": "model",
                    "created": engine.created,
                    "owned_by": "exgra",
                    "metadata": {
                        "notice": RESEARCH_NOTICE,
                        "intended_use": "research",
                        "clinical_use": False,
                        "template": generator.template_name if generator else None,
                        "ready": engine.ready,
                    },
                }
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        # Announced before its body is read, so a batch collecting the clients it just answered waits
        # for this one too.
        announced = engine.announce()
        try:
            parsed = _parse_request(await _read_body(request, config.max_request_bytes))
        except BaseException:
            if announced:
                engine.withdraw()
            raise
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not parsed.stream:
            answer, prompt_tokens, max_tokens = await engine.answer(parsed, announced=announced)
            finish = "length" if answer.num_new_tokens >= max_tokens else "stop"
            # A response object, so FastAPI does not walk the body through jsonable_encoder first.
            return JSONResponse(
                completion_body(
                    completion_id,
                    created,
                    engine.model_name,
                    answer.text,
                    finish,
                    _usage(prompt_tokens, answer.num_new_tokens),
                )
            )
        deltas, future, prompt_tokens, max_tokens = await engine.stream(parsed, announced=announced)
        include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)

        def event(body: dict[str, Any]) -> str:
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            yield event(
                chunk_body(completion_id, created, engine.model_name, {"role": "assistant", "content": ""})
            )
            sent = ""
            async for text in deltas:
                sent += text
                yield event(chunk_body(completion_id, created, engine.model_name, {"content": text}))
            try:
                answer = future.result()
            except APIError as exc:
                yield event(exc.body())
                yield "data: [DONE]\n\n"
                return
            except Exception:
                yield event(error_body(500, "internal server error; the server log has the details"))
                yield "data: [DONE]\n\n"
                return
            if answer.text.startswith(sent) and len(answer.text) > len(sent):
                yield event(
                    chunk_body(
                        completion_id, created, engine.model_name, {"content": answer.text[len(sent) :]}
                    )
                )
            finish = "length" if answer.num_new_tokens >= max_tokens else "stop"
            yield event(chunk_body(completion_id, created, engine.model_name, {}, finish))
            if include_usage:
                usage = _usage(prompt_tokens, answer.num_new_tokens)
                yield event(chunk_body(completion_id, created, engine.model_name, None, usage=usage))
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    if config.ui:
        from exgra.serve.ui import mount_ui

        mount_ui(app, config)
    return app
