"""Async chat-completions client: bounded concurrency, retries with full jitter, bounded re-asks."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import Field

from exgra.config import Section
from exgra.errors import ExgraError
from exgra.llm.keys import Credentials, Redactor

T = TypeVar("T")

# Status codes worth another try: timeouts, conflicts, rate limits and server errors.
RETRYABLE_STATUS = {408, 409, 425, 429}
# Statuses that will fail every request of the run the same way: stop at once with one clear line.
FATAL_STATUS = {401: "the endpoint rejected the API key (401)", 403: "the endpoint refused access (403)"}


class ReplyError(Exception):
    """A reply that arrived but cannot be used (not JSON, missing field, out of range): re-ask."""


class LLMSettings(Section):
    """How requests are sent (validated): ``max_retries`` bounds transport retries, ``max_reasks`` bad
    replies. A ``timeout`` of 0 or less would fail every request, so it is refused here."""

    model: str = Field("openai/gpt-4o-mini", min_length=1)
    base_url: str | None = None
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(6, ge=0)
    max_reasks: int = Field(3, ge=0)
    timeout: float = Field(120.0, gt=0, allow_inf_nan=False)
    backoff_base: float = Field(1.0, ge=0)
    backoff_cap: float = Field(60.0, ge=0)
    retry_after_cap: float = Field(600.0, ge=0)
    temperature: float | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)


@dataclass
class LLMStats:
    """Running totals shown in the progress bar and the final report."""

    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class LLMResult(Generic[T]):
    """One request's outcome: the parsed value, or the (redacted) reason it failed."""

    value: T | None
    text: str | None
    error: str | None = None
    model: str | None = None
    response_ids: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**retry)] (retry counts from 0)."""
    upper = min(cap, base * (2.0**retry))
    return (rng or random).uniform(0.0, upper)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class LLMClient:
    """Sends chat requests through one ``AsyncOpenAI`` client with our own retry policy.

    Create it inside a running event loop (``async with LLMClient(...) as client``).
    """

    def __init__(
        self,
        settings: LLMSettings,
        credentials: Credentials,
        stats: LLMStats | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        from openai import AsyncOpenAI

        self.settings = settings
        self.stats = stats or LLMStats()
        self.redact = Redactor(credentials.api_key)
        self._on_retry = on_retry
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._rng = random.Random()
        self._client = AsyncOpenAI(
            api_key=credentials.api_key,
            base_url=settings.base_url or credentials.base_url,
            max_retries=0,  # our policy below: backoff, jitter, Retry-After and counting are ours
            timeout=settings.timeout,
        )

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.close()

    def _retry_delay(self, error: Exception, retry: int) -> float | None:
        """Seconds before retrying ``error``, or None when it must not be retried."""
        import openai

        if isinstance(error, openai.APIStatusError):
            status = error.status_code
            if status in FATAL_STATUS:
                raise ExgraError(f"{FATAL_STATUS[status]}: check the key and --base-url")
            if status not in RETRYABLE_STATUS and status < 500:
                return None
            hinted = parse_retry_after(error.response.headers)
            if hinted is not None:
                return min(hinted, self.settings.retry_after_cap)
        elif not isinstance(error, (openai.APIConnectionError, openai.APIResponseValidationError)):
            return None
        return backoff_delay(retry, self.settings.backoff_base, self.settings.backoff_cap, self._rng)

    def _describe(self, error: Exception) -> str:
        import openai

        if isinstance(error, openai.APIStatusError):
            text = f"HTTP {error.status_code}: {error.message}"
        else:
            text = f"{type(error).__name__}: {error}"
        return self.redact(" ".join(text.split())[:300])

    async def complete(
        self, messages: list[dict[str, str]], parse: Callable[[str], T], **extra: Any
    ) -> LLMResult[T]:
        """Send ``messages``; return ``parse(reply_text)`` or a failed result after bounded retries.

        ``parse`` raises :class:`ReplyError` for a reply it cannot use; the request is then re-asked up
        to ``max_reasks`` times. Transport errors, 408/409/429 and 5xx are retried up to
        ``max_retries`` times. A 401/403 raises :class:`ExgraError` (every request would fail).
        """
        import openai

        settings = self.settings
        result: LLMResult[T] = LLMResult(value=None, text=None)
        transport_retries = 0
        reasks = 0
        options: dict[str, Any] = dict(extra)
        if settings.temperature is not None:
            options.setdefault("temperature", settings.temperature)
        if settings.max_tokens is not None:
            options.setdefault("max_tokens", settings.max_tokens)
        while True:
            result.attempts += 1
            self.stats.requests += 1
            async with self._semaphore:
                try:
                    response = await self._client.chat.completions.create(
                        model=settings.model, messages=messages, **options
                    )
                    error: Exception | None = None
                except (openai.APIError, openai.APIConnectionError) as exc:
                    error = exc
            if error is not None:
                delay = self._retry_delay(error, transport_retries)
                if delay is None or transport_retries >= settings.max_retries:
                    reason = "gave up after retries" if delay is not None else "not retryable"
                    result.error = f"{self._describe(error)} ({reason})"
                    self.stats.failed += 1
                    return result
                transport_retries += 1
                self.stats.retries += 1
                if self._on_retry:
                    self._on_retry()
                await asyncio.sleep(delay)  # outside the semaphore: other requests keep going
                continue

            usage = getattr(response, "usage", None)
            if usage is not None:
                result.prompt_tokens += usage.prompt_tokens or 0
                result.completion_tokens += usage.completion_tokens or 0
                self.stats.prompt_tokens += usage.prompt_tokens or 0
                self.stats.completion_tokens += usage.completion_tokens or 0
            result.model = getattr(response, "model", None) or settings.model
            if getattr(response, "id", None):
                result.response_ids.append(response.id)
            choices = getattr(response, "choices", None) or []
            text = choices[0].message.content if choices and choices[0].message else None
            result.text = text
            try:
                if not text:
                    raise ReplyError("empty reply")
                result.value = parse(text)
            except ReplyError as exc:
                if reasks >= settings.max_reasks:
                    result.error = self.redact(f"unusable reply after {reasks + 1} tries: {exc}")
                    self.stats.failed += 1
                    return result
                reasks += 1
                self.stats.reasks += 1
                if self._on_retry:
                    self._on_retry()
                continue
            self.stats.succeeded += 1
            return result
