"""API keys and endpoints from the environment or a ``.env`` file, and their redaction."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from dotenv import dotenv_values

from exgra.errors import ExgraError

# Variables the reference reads (OPENROUTER_*) and the OpenAI SDK's own names.
KEY_VARIABLES = ("OPENAI_API_KEY", "OPENROUTER_API_KEY")
OPENROUTER_DEFAULT_ENDPOINT = "https://openrouter.ai/api/v1"


@dataclass(frozen=True)
class Credentials:
    """Where requests go and the key they carry (the key is never part of ``repr``)."""

    base_url: str | None
    api_key: str = field(repr=False)
    key_source: str


def _environment(env_file: str | Path | None) -> dict[str, str]:
    """The process environment over the values of ``.env`` (the environment wins, as python-dotenv does)."""
    path = Path(env_file) if env_file is not None else Path.cwd() / ".env"
    values: dict[str, str] = {}
    if path.is_file():
        values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    elif env_file is not None:
        raise ExgraError(f"the .env file {path} does not exist")
    values.update(os.environ)
    return values


def _is_local(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    return host in {"localhost", "127.0.0.1", "::1"}


def resolve_credentials(
    base_url: str | None = None, env_file: str | Path | None = None, require_key: bool = True
) -> Credentials:
    """Find the API key and endpoint: OPENAI_API_KEY, then OPENROUTER_API_KEY (with OPENROUTER_ENDPOINT).

    ``base_url`` given explicitly wins over OPENROUTER_ENDPOINT / OPENAI_BASE_URL. A local endpoint
    (localhost) may run without a key, as vLLM and llama.cpp servers do.
    """
    env = _environment(env_file)
    for variable in KEY_VARIABLES:
        key = env.get(variable, "").strip()
        if key:
            if base_url is None:
                if variable == "OPENROUTER_API_KEY":
                    base_url = env.get("OPENROUTER_ENDPOINT") or OPENROUTER_DEFAULT_ENDPOINT
                else:
                    base_url = env.get("OPENAI_BASE_URL") or None
            return Credentials(base_url=base_url, api_key=key, key_source=variable)
    if base_url is None:
        base_url = env.get("OPENROUTER_ENDPOINT") or env.get("OPENAI_BASE_URL") or None
    if require_key and not _is_local(base_url):
        raise ExgraError(
            "no API key found: set OPENAI_API_KEY or OPENROUTER_API_KEY in the environment or in a .env file"
        )
    return Credentials(base_url=base_url, api_key="not-needed", key_source="none")


class Redactor:
    """Replaces secrets in any text before it is printed, logged or written to disk."""

    def __init__(self, *secrets: str) -> None:
        # Very short "keys" (placeholders like "x") would mangle ordinary text; real keys are long.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
