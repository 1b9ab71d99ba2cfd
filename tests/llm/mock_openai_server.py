"""A real OpenAI-compatible HTTP server on 127.0.0.1 with scripted faults, for tests and benchmarks.

``POST /v1/chat/completions`` answers with a reply computed by ``responder(messages)``. Faults are
taken in order from ``faults`` (one per request); every request whose user message contains a string
of ``always_fail`` gets a 500 and one containing a string of ``always_malformed`` a malformed reply:

- ``"429"``: rate limited with ``Retry-After`` (``retry_after`` seconds, fractional allowed)
- ``"500"``: server error whose body echoes the ``Authorization`` header (to test redaction)
- ``"401"``: the key is refused
- ``"drop"``: the connection is closed without any response
- ``"slow"``: the reply comes after ``slow_seconds``
- ``"malformed"``: the assistant's content is not JSON / not in the expected format
- ``"fenced"``: the assistant's content is wrapped in a Markdown code fence (repairable)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web


def caption_responder(messages: list[dict[str, str]]) -> str:
    """What a well-behaved model answers to the extend-caption prompt."""
    payload = json.loads(messages[-1]["content"])
    return json.dumps(
        {
            "explanation": {"helpfulness": "ok", "relevance": "ok", "accuracy": "ok", "detail": "short"},
            "revision": f"EXTENDED: {payload['answer']}",
        }
    )


def judge_responder(messages: list[dict[str, str]]) -> str:
    """A judge that gives the reference 8 and the model 6, unless the model answer says 'perfect'."""
    user = messages[-1]["content"]
    second = user.split("[Assistant 2]", 1)[1]
    return ("8 8" if "perfect" in second else "8 6") + "\nAssistant 1 is more detailed."


class MockOpenAIServer:
    def __init__(
        self,
        responder: Callable[[list[dict[str, str]]], str] = caption_responder,
        latency: float = 0.0,
        faults: list[str] | None = None,
        always_fail: tuple[str, ...] = (),
        always_malformed: tuple[str, ...] = (),
        retry_after: float = 0.05,
        slow_seconds: float = 0.5,
    ) -> None:
        self.responder = responder
        self.latency = latency
        self.faults: deque[str] = deque(faults or [])
        self.always_fail = always_fail
        self.always_malformed = always_malformed
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.requests = 0
        self.completed = 0
        self.faults_served: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.request_times: list[float] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add_faults(self, *faults: str) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _next_fault(self, user_text: str) -> tuple[int, str | None]:
        with self._lock:
            self.requests += 1
            number = self.requests
            self.request_times.append(time.monotonic())
            if any(marker in user_text for marker in self.always_fail):
                fault = "500"
            elif any(marker in user_text for marker in self.always_malformed):
                fault = "malformed"
            elif self.faults:
                fault = self.faults.popleft()
            else:
                fault = None
            if fault:
                self.faults_served[fault] = self.faults_served.get(fault, 0) + 1
            return number, fault

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages = body["messages"]
        number, fault = self._next_fault(messages[-1]["content"])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if fault == "429":
                return web.json_response(
                    {"error": {"message": "rate limited", "type": "rate_limit"}},
                    status=429,
                    headers={"Retry-After": str(self.retry_after)},
                )
            if fault == "401":
                return web.json_response({"error": {"message": "invalid api key"}}, status=401)
            if fault == "500":
                auth = request.headers.get("Authorization", "")
                return web.json_response({"error": {"message": f"internal error for {auth}"}}, status=500)
            if fault == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            if fault == "slow":
                await asyncio.sleep(self.slow_seconds)
            content = self.responder(messages)
            if fault == "malformed":
                content = "I think the answer is fine {not json"
            elif fault == "fenced":
                content = f"```json\n{content}\n```"
            self.completed += 1
            return web.json_response(
                {
                    "id": f"chatcmpl-{number}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "mock"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
            )
        finally:
            self.in_flight -= 1

    def start(self) -> MockOpenAIServer:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> MockOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
