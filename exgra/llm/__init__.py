"""A small OpenAI-compatible chat client shared by caption extension and chatbot judging.

Bounded concurrency (one ``asyncio.Semaphore``), our own retry policy (exponential backoff with full
jitter that honours ``Retry-After``), bounded re-asks for malformed replies, token accounting, and API
keys read from the environment or ``.env`` and never printed.
"""

from __future__ import annotations

from exgra.llm.client import (
    LLMClient,
    LLMResult,
    LLMSettings,
    LLMStats,
    ReplyError,
    backoff_delay,
    parse_retry_after,
)
from exgra.llm.keys import Credentials, Redactor, resolve_credentials
from exgra.llm.replies import extract_json_object

__all__ = [
    "Credentials",
    "LLMClient",
    "LLMResult",
    "LLMSettings",
    "LLMStats",
    "Redactor",
    "ReplyError",
    "backoff_delay",
    "extract_json_object",
    "parse_retry_after",
    "resolve_credentials",
]
